//! `SlidingSyncStore` on SQLite.

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::rows::{self, ROOM_LIST_COLUMNS};
use chancery_store_sql::{i, u};
use rusqlite::{Connection, OptionalExtension, params};

use crate::rooms::collect;
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// Drops a connection and everything recorded for it.
fn drop_connection(conn: &Connection, conn_key: i64) -> StoreResult<()> {
    for sql in [
        "DELETE FROM sliding_sync_rooms WHERE conn_key = ?1",
        "DELETE FROM sliding_sync_positions WHERE conn_key = ?1",
        "DELETE FROM sliding_sync_connections WHERE conn_key = ?1",
    ] {
        conn.prepare_cached(sql).and_then(|mut s| s.execute([conn_key])).map_err(backend)?;
    }
    Ok(())
}

/// Each room's newest record at or before `pos`, by room id.
fn rooms_at(conn: &Connection, conn_key: i64, pos: i64) -> StoreResult<Vec<SentRoom>> {
    let mut stmt = conn
        .prepare_cached("SELECT room_id, record FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos <= ?2 ORDER BY room_id, pos")
        .map_err(backend)?;
    let rows =
        collect(stmt.query_map([conn_key, pos], |r| Ok(SentRoom { room_id: r.get(0)?, record: r.get(1)? })).map_err(backend)?)?;
    let mut rooms: Vec<SentRoom> = Vec::with_capacity(rows.len());
    for room in rows {
        match rooms.last_mut() {
            // Sorted by position within a room: the later record wins.
            Some(last) if last.room_id == room.room_id => *last = room,
            _ => rooms.push(room),
        }
    }
    Ok(rooms)
}

#[async_trait]
impl SlidingSyncStore for SqliteStore {
    async fn room_list(&self, user_id: &str) -> StoreResult<Vec<RoomListEntry>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {ROOM_LIST_COLUMNS}
                 FROM room_state s JOIN rooms r ON r.room_id = s.room_id
                 WHERE s.state_key = ?1 AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
                 ORDER BY s.room_id"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map([&user_id], |r| rows::room_list_entry(&SqliteRow(r))).map_err(backend)?)
        })
        .await
    }

    async fn start_sliding_connection(&self, owner: ConnectionOwner<'_>, now_ts: u64, max_per_device: usize) -> StoreResult<u64> {
        let (user_id, device_id, conn_id) = (owner.user_id.to_owned(), owner.device_id.to_owned(), owner.conn_id.to_owned());
        self.write(move |tx| {
            let previous: Option<i64> = tx
                .prepare_cached(
                    "SELECT conn_key FROM sliding_sync_connections WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3",
                )
                .and_then(|mut s| s.query_row([&user_id, &device_id, &conn_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            if let Some(key) = previous {
                drop_connection(tx, key)?;
            }
            tx.prepare_cached(
                "INSERT INTO sliding_sync_connections (user_id, device_id, conn_id, last_used_ts) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![user_id, device_id, conn_id, i(now_ts)]))
            .map_err(backend)?;
            let conn_key = tx.last_insert_rowid();
            let beyond: Vec<i64> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT conn_key FROM sliding_sync_connections WHERE user_id = ?1 AND device_id = ?2
                         ORDER BY last_used_ts DESC, conn_key DESC LIMIT -1 OFFSET ?3",
                    )
                    .map_err(backend)?;
                collect(stmt.query_map(params![user_id, device_id, i(max_per_device as u64)], |r| r.get(0)).map_err(backend)?)?
            };
            for key in beyond {
                drop_connection(tx, key)?;
            }
            Ok(u(conn_key))
        })
        .await
    }

    async fn sliding_position(
        &self,
        owner: ConnectionOwner<'_>,
        conn_key: u64,
        pos: u64,
        with_rooms: bool,
    ) -> StoreResult<SlidingPosition> {
        let (user_id, device_id, conn_id) = (owner.user_id.to_owned(), owner.device_id.to_owned(), owner.conn_id.to_owned());
        self.read(move |conn| {
            // Two statements, one snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let token: Option<String> = tx
                .prepare_cached(
                    "SELECT p.token FROM sliding_sync_connections c
                     JOIN sliding_sync_positions p ON p.conn_key = c.conn_key AND p.pos = ?5
                     WHERE c.conn_key = ?4 AND c.user_id = ?1 AND c.device_id = ?2 AND c.conn_id = ?3",
                )
                .and_then(|mut s| s.query_row(params![user_id, device_id, conn_id, i(conn_key), i(pos)], |r| r.get(0)).optional())
                .map_err(backend)?;
            let token = token.ok_or(StoreError::UnknownPosition)?;
            let rooms = if with_rooms { rooms_at(&tx, i(conn_key), i(pos))? } else { Vec::new() };
            Ok(SlidingPosition { conn_key, pos, token, rooms })
        })
        .await
    }

    async fn record_sliding_answer(
        &self,
        conn_key: u64,
        base_pos: u64,
        token: &str,
        rooms: &[SentRoom],
        now_ts: u64,
    ) -> StoreResult<u64> {
        let (token, rooms) = (token.to_owned(), rooms.to_vec());
        self.write(move |tx| {
            let (key, base) = (i(conn_key), i(base_pos));
            let next: i64 = tx
                .prepare_cached("SELECT next_pos FROM sliding_sync_connections WHERE conn_key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(backend)?
                .ok_or(StoreError::UnknownPosition)?;
            if base_pos != 0 {
                tx.prepare_cached("SELECT 1 FROM sliding_sync_positions WHERE conn_key = ?1 AND pos = ?2")
                    .and_then(|mut s| s.query_row([key, base], |_| Ok(())).optional())
                    .map_err(backend)?
                    .ok_or(StoreError::UnknownPosition)?;
            }
            for sql in [
                "DELETE FROM sliding_sync_positions WHERE conn_key = ?1 AND pos <> ?2",
                "DELETE FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos > ?2",
                // Records the base position's superseded; every earlier
                // position was a base once, so nothing older is left over.
                "DELETE FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos < ?2
                   AND room_id IN (SELECT room_id FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos = ?2)",
            ] {
                tx.prepare_cached(sql).and_then(|mut s| s.execute([key, base])).map_err(backend)?;
            }
            tx.prepare_cached("UPDATE sliding_sync_connections SET next_pos = ?2, last_used_ts = ?3 WHERE conn_key = ?1")
                .and_then(|mut s| s.execute(params![key, next + 1, i(now_ts)]))
                .map_err(backend)?;
            tx.prepare_cached("INSERT INTO sliding_sync_positions (conn_key, pos, token) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![key, next, token]))
                .map_err(backend)?;
            let mut insert = tx
                .prepare_cached("INSERT INTO sliding_sync_rooms (conn_key, room_id, pos, record) VALUES (?1, ?2, ?3, ?4)")
                .map_err(backend)?;
            for room in &rooms {
                insert.execute(params![key, room.room_id, next, room.record]).map_err(|e| {
                    if crate::accounts::is_unique_violation(&e) {
                        StoreError::Contract("two records of one room in one answer")
                    } else {
                        backend(e)
                    }
                })?;
            }
            Ok(u(next))
        })
        .await
    }

    async fn expire_sliding_connections(&self, before_ts: u64, max: usize) -> StoreResult<u64> {
        self.write(move |tx| {
            let keys: Vec<i64> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT conn_key FROM sliding_sync_connections WHERE last_used_ts < ?1 ORDER BY last_used_ts LIMIT ?2",
                    )
                    .map_err(backend)?;
                collect(stmt.query_map([i(before_ts), i(max as u64)], |r| r.get(0)).map_err(backend)?)?
            };
            for key in &keys {
                drop_connection(tx, *key)?;
            }
            Ok(keys.len() as u64)
        })
        .await
    }
}
