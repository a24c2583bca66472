//! `RoomHistoryStore` on SQLite: rooms' history from before the join.

use async_trait::async_trait;
use chancery_store::{BackfilledEvent, HistoryEvent, HistoryStatus, RoomHistoryStore, StoreResult};
use chancery_store_sql::{i, u};
use rusqlite::{OptionalExtension, Row, params};

use crate::{SqliteStore, backend};

/// `?1` the room, `?2` an event id not stored yet.
const ADD_TO_FRONTIER: &str = "INSERT INTO history_frontier (room_id, event_id) SELECT ?1, ?2
     WHERE NOT EXISTS (SELECT 1 FROM history_events WHERE event_id = ?2)
     ON CONFLICT DO NOTHING";

const HISTORY_COLUMNS: &str = "ordinal, event_id, event_type, state_key, sender, origin_server_ts, depth, json, shown";

fn history_event(r: &Row<'_>) -> rusqlite::Result<HistoryEvent> {
    Ok(HistoryEvent {
        ordinal: u(r.get(0)?),
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        state_key: r.get(3)?,
        sender: r.get(4)?,
        origin_server_ts: u(r.get(5)?),
        depth: u(r.get(6)?),
        json: r.get(7)?,
        shown: r.get(8)?,
    })
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl RoomHistoryStore for SqliteStore {
    async fn open_history(&self, room_id: &str, frontier: &[String]) -> StoreResult<()> {
        let (room_id, frontier) = (room_id.to_owned(), frontier.to_vec());
        self.write(move |tx| {
            tx.execute("INSERT INTO history_rooms (room_id) VALUES (?1) ON CONFLICT DO NOTHING", [&room_id]).map_err(backend)?;
            for id in &frontier {
                tx.execute(ADD_TO_FRONTIER, params![room_id, id]).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn history_status(&self, room_id: &str) -> StoreResult<HistoryStatus> {
        let room_id = room_id.to_owned();
        self.read(move |conn| {
            let opened = conn
                .query_row("SELECT 1 FROM history_rooms WHERE room_id = ?1", [&room_id], |_| Ok(()))
                .optional()
                .map_err(backend)?
                .is_some();
            let count = |sql: &str| conn.query_row(sql, [&room_id], |r| r.get::<_, i64>(0)).map(u).map_err(backend);
            Ok(HistoryStatus {
                opened,
                frontier: count("SELECT COUNT(*) FROM history_frontier WHERE room_id = ?1")?,
                stored: count("SELECT COUNT(*) FROM history_events WHERE room_id = ?1")?,
            })
        })
        .await
    }

    async fn history_frontier(&self, room_id: &str, limit: usize) -> StoreResult<Vec<String>> {
        let room_id = room_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT event_id FROM history_frontier WHERE room_id = ?1 ORDER BY event_id LIMIT ?2")
                .map_err(backend)?;
            let rows = stmt.query_map(params![room_id, limit_param(limit)], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn add_history(
        &self,
        room_id: &str,
        asked: &[String],
        events: &[BackfilledEvent],
        max_events: u64,
    ) -> StoreResult<usize> {
        let (room_id, asked, events) = (room_id.to_owned(), asked.to_vec(), events.to_vec());
        self.write(move |tx| {
            let opened = tx
                .query_row("SELECT 1 FROM history_rooms WHERE room_id = ?1", [&room_id], |_| Ok(()))
                .optional()
                .map_err(backend)?
                .is_some();
            if !opened {
                return Ok(0);
            }
            for id in &asked {
                tx.execute("DELETE FROM history_frontier WHERE room_id = ?1 AND event_id = ?2", params![room_id, id])
                    .map_err(backend)?;
            }
            let (mut count, mut next): (u64, u64) = tx
                .query_row(
                    "SELECT COUNT(*), COALESCE(MAX(ordinal), 0) + 1 FROM history_events WHERE room_id = ?1",
                    [&room_id],
                    |r| Ok((u(r.get(0)?), u(r.get(1)?))),
                )
                .map_err(backend)?;
            let mut stored = Vec::new();
            for event in &events {
                if count >= max_events {
                    tx.execute("DELETE FROM history_frontier WHERE room_id = ?1", [&room_id]).map_err(backend)?;
                    return Ok(stored.len());
                }
                tx.execute("DELETE FROM history_frontier WHERE room_id = ?1 AND event_id = ?2", params![room_id, event.event_id])
                    .map_err(backend)?;
                let inserted = tx
                    .execute(
                        "INSERT INTO history_events
                           (room_id, ordinal, event_id, event_type, state_key, sender, origin_server_ts, depth, json, shown)
                         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NOT EXISTS (SELECT 1 FROM events WHERE event_id = ?3)
                         ON CONFLICT DO NOTHING",
                        params![
                            room_id,
                            i(next),
                            event.event_id,
                            event.event_type,
                            event.state_key,
                            event.sender,
                            i(event.origin_server_ts),
                            i(event.depth),
                            event.json,
                        ],
                    )
                    .map_err(backend)?;
                if inserted == 1 {
                    next += 1;
                    count += 1;
                    stored.push(event);
                }
            }
            for id in stored.iter().flat_map(|e| &e.prev_events) {
                tx.execute(ADD_TO_FRONTIER, params![room_id, id]).map_err(backend)?;
            }
            Ok(stored.len())
        })
        .await
    }

    async fn history_page(&self, room_id: &str, after: u64, limit: usize) -> StoreResult<Vec<HistoryEvent>> {
        let room_id = room_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {HISTORY_COLUMNS} FROM history_events WHERE room_id = ?1 AND ordinal > ?2 AND shown
                 ORDER BY ordinal LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt.query_map(params![room_id, i(after), limit_param(limit)], history_event).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn history_of_type(&self, room_id: &str, event_type: &str, limit: usize) -> StoreResult<Vec<HistoryEvent>> {
        let (room_id, event_type) = (room_id.to_owned(), event_type.to_owned());
        self.read(move |conn| {
            let sql = format!(
                "SELECT {HISTORY_COLUMNS} FROM history_events WHERE room_id = ?1 AND event_type = ?2
                 ORDER BY ordinal LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt.query_map(params![room_id, event_type, limit_param(limit)], history_event).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }
}
