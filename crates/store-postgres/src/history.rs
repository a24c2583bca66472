//! `RoomHistoryStore` on PostgreSQL: rooms' history from before the join.

use async_trait::async_trait;
use chancery_store::{BackfilledEvent, HistoryEvent, HistoryStatus, RoomHistoryStore, StoreResult};
use chancery_store_sql::{i, u};
use tokio_postgres::Row;

use crate::query::{execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// Class of the per-room advisory lock under which a room's history is
/// numbered (two nodes fetching the same room's history at once).
const HISTORY_LOCK: i32 = 0x6869_7374; // "hist"

const HISTORY_COLUMNS: &str = "ordinal, event_id, event_type, state_key, sender, origin_server_ts, depth, json, shown";

fn history_event(r: &Row) -> StoreResult<HistoryEvent> {
    Ok(HistoryEvent {
        ordinal: u(get(r, 0)?),
        event_id: get(r, 1)?,
        event_type: get(r, 2)?,
        state_key: get(r, 3)?,
        sender: get(r, 4)?,
        origin_server_ts: u(get(r, 5)?),
        depth: u(get(r, 6)?),
        json: get(r, 7)?,
        shown: get(r, 8)?,
    })
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

const ADD_TO_FRONTIER: &str = "INSERT INTO history_frontier (room_id, event_id) SELECT $1, $2
     WHERE NOT EXISTS (SELECT 1 FROM history_events WHERE event_id = $2)
     ON CONFLICT DO NOTHING";

#[async_trait]
impl RoomHistoryStore for PostgresStore {
    async fn open_history(&self, room_id: &str, frontier: &[String]) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        execute(&tx, "INSERT INTO history_rooms (room_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&room_id])
            .await
            .map_err(backend)?;
        for id in frontier {
            execute(&tx, ADD_TO_FRONTIER, &[&room_id, id]).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn history_status(&self, room_id: &str) -> StoreResult<HistoryStatus> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT EXISTS (SELECT 1 FROM history_rooms WHERE room_id = $1),
                    (SELECT COUNT(*) FROM history_frontier WHERE room_id = $1),
                    (SELECT COUNT(*) FROM history_events WHERE room_id = $1)",
            &[&room_id],
        )
        .await?;
        let Some(row) = row else { return Ok(HistoryStatus::default()) };
        Ok(HistoryStatus { opened: get(&row, 0)?, frontier: u(get(&row, 1)?), stored: u(get(&row, 2)?) })
    }

    async fn history_frontier(&self, room_id: &str, limit: usize) -> StoreResult<Vec<String>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT event_id FROM history_frontier WHERE room_id = $1 ORDER BY event_id LIMIT $2",
            &[&room_id, &limit_param(limit)],
        )
        .await?;
        rows.iter().map(|r| get(r, 0)).collect()
    }

    async fn add_history(
        &self,
        room_id: &str,
        asked: &[String],
        events: &[BackfilledEvent],
        max_events: u64,
    ) -> StoreResult<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        execute(&tx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&HISTORY_LOCK, &room_id]).await.map_err(backend)?;
        let opened = query_opt(&tx, "SELECT 1 FROM history_rooms WHERE room_id = $1", &[&room_id]).await?.is_some();
        if !opened {
            return Ok(0);
        }
        for id in asked {
            execute(&tx, "DELETE FROM history_frontier WHERE room_id = $1 AND event_id = $2", &[&room_id, id])
                .await
                .map_err(backend)?;
        }
        let row =
            query_opt(&tx, "SELECT COUNT(*), COALESCE(MAX(ordinal), 0) + 1 FROM history_events WHERE room_id = $1", &[&room_id])
                .await?;
        let (mut count, mut next) = match row {
            Some(row) => (u(get(&row, 0)?), u(get(&row, 1)?)),
            None => (0, 1),
        };
        let mut stored = Vec::new();
        for event in events {
            if count >= max_events {
                execute(&tx, "DELETE FROM history_frontier WHERE room_id = $1", &[&room_id]).await.map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                return Ok(stored.len());
            }
            execute(&tx, "DELETE FROM history_frontier WHERE room_id = $1 AND event_id = $2", &[&room_id, &event.event_id])
                .await
                .map_err(backend)?;
            let inserted = execute(
                &tx,
                "INSERT INTO history_events
                   (room_id, ordinal, event_id, event_type, state_key, sender, origin_server_ts, depth, json, shown)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, NOT EXISTS (SELECT 1 FROM events WHERE event_id = $3)
                 ON CONFLICT DO NOTHING",
                &[
                    &room_id,
                    &i(next),
                    &event.event_id,
                    &event.event_type,
                    &event.state_key,
                    &event.sender,
                    &i(event.origin_server_ts),
                    &i(event.depth),
                    &event.json,
                ],
            )
            .await
            .map_err(backend)?;
            if inserted == 1 {
                next += 1;
                count += 1;
                stored.push(event);
            }
        }
        for id in stored.iter().flat_map(|e| &e.prev_events) {
            execute(&tx, ADD_TO_FRONTIER, &[&room_id, id]).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(stored.len())
    }

    async fn history_page(&self, room_id: &str, after: u64, limit: usize) -> StoreResult<Vec<HistoryEvent>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM history_events WHERE room_id = $1 AND ordinal > $2 AND shown
             ORDER BY ordinal LIMIT $3"
        );
        let rows = query(&client, &sql, &[&room_id, &i(after), &limit_param(limit)]).await?;
        rows.iter().map(history_event).collect()
    }

    async fn history_of_type(&self, room_id: &str, event_type: &str, limit: usize) -> StoreResult<Vec<HistoryEvent>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM history_events WHERE room_id = $1 AND event_type = $2
             ORDER BY ordinal LIMIT $3"
        );
        let rows = query(&client, &sql, &[&room_id, &event_type, &limit_param(limit)]).await?;
        rows.iter().map(history_event).collect()
    }
}
