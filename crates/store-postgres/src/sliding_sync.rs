//! `SlidingSyncStore` on PostgreSQL.

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::rows::{self, ROOM_LIST_COLUMNS};
use chancery_store_sql::{i, u};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::error::SqlState;

use crate::query::{PgRow, execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// The advisory lock class of a device's connection starts ("slid").
const CONNECTIONS_LOCK: i32 = 0x736c_6964;

/// Drops these connections and everything recorded for them.
async fn drop_connections(tx: &Transaction<'_>, conn_keys: &[i64]) -> StoreResult<()> {
    if conn_keys.is_empty() {
        return Ok(());
    }
    execute(
        tx,
        "WITH r AS (DELETE FROM sliding_sync_rooms WHERE conn_key = ANY($1)),
              p AS (DELETE FROM sliding_sync_positions WHERE conn_key = ANY($1))
         DELETE FROM sliding_sync_connections WHERE conn_key = ANY($1)",
        &[&conn_keys],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Each room's newest record at or before `pos`, by room id.
async fn rooms_at(c: &impl GenericClient, conn_key: i64, pos: i64) -> StoreResult<Vec<SentRoom>> {
    let rows = query(
        c,
        "SELECT DISTINCT ON (room_id) room_id, record FROM sliding_sync_rooms
         WHERE conn_key = $1 AND pos <= $2 ORDER BY room_id, pos DESC",
        &[&conn_key, &pos],
    )
    .await?;
    rows.iter().map(|r| Ok(SentRoom { room_id: get(r, 0)?, record: get(r, 1)? })).collect()
}

#[async_trait]
impl SlidingSyncStore for PostgresStore {
    async fn room_list(&self, user_id: &str) -> StoreResult<Vec<RoomListEntry>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {ROOM_LIST_COLUMNS}
             FROM room_state s JOIN rooms r ON r.room_id = s.room_id
             WHERE s.state_key = $1 AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
             ORDER BY s.room_id"
        );
        let rows = query(&client, &sql, &[&user_id]).await?;
        rows.iter().map(|r| rows::room_list_entry(&PgRow(r))).collect()
    }

    async fn room_list_changes(&self, user_id: &str, after: u64, max_rooms: usize) -> StoreResult<Option<Vec<RoomListEntry>>> {
        let client = self.client().await?;
        let (after, limit) = (i(after), i64::try_from(max_rooms).unwrap_or(i64::MAX).saturating_add(1));
        let moved =
            query_opt(&client, "SELECT COUNT(*) FROM (SELECT 1 FROM rooms WHERE last_pos > $1 LIMIT $2) m", &[&after, &limit])
                .await?
                .map_or(Ok(0), |row| get::<i64>(&row, 0))?;
        if moved >= limit {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {ROOM_LIST_COLUMNS}
             FROM rooms r JOIN room_state s ON s.room_id = r.room_id
                 AND s.state_key = $1 AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
             WHERE r.last_pos > $2
             ORDER BY s.room_id"
        );
        let rows = query(&client, &sql, &[&user_id, &after]).await?;
        rows.iter().map(|r| rows::room_list_entry(&PgRow(r))).collect::<StoreResult<Vec<_>>>().map(Some)
    }

    async fn start_sliding_connection(&self, owner: ConnectionOwner<'_>, now_ts: u64, max_per_device: usize) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Starts of one device's connections go one at a time, and the
        // rows they drop are locked first, so an answer being recorded on
        // one of them finishes before its rows go (none is left behind).
        query(
            &tx,
            "SELECT pg_advisory_xact_lock($1, hashtext($2 || ' ' || $3))",
            &[&CONNECTIONS_LOCK, &owner.user_id, &owner.device_id],
        )
        .await?;
        let previous: Vec<i64> = query(
            &tx,
            "SELECT conn_key FROM sliding_sync_connections WHERE user_id = $1 AND device_id = $2 AND conn_id = $3
             FOR UPDATE",
            &[&owner.user_id, &owner.device_id, &owner.conn_id],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<StoreResult<_>>()?;
        drop_connections(&tx, &previous).await?;
        let row = query_opt(
            &tx,
            "INSERT INTO sliding_sync_connections (user_id, device_id, conn_id, last_used_ts) VALUES ($1, $2, $3, $4)
             RETURNING conn_key",
            &[&owner.user_id, &owner.device_id, &owner.conn_id, &i(now_ts)],
        )
        .await?
        .ok_or_else(|| StoreError::Backend("INSERT returned no row".into()))?;
        let conn_key: i64 = get(&row, 0)?;
        let beyond: Vec<i64> = query(
            &tx,
            "SELECT conn_key FROM sliding_sync_connections WHERE user_id = $1 AND device_id = $2
             ORDER BY last_used_ts DESC, conn_key DESC OFFSET $3 FOR UPDATE",
            &[&owner.user_id, &owner.device_id, &i(max_per_device as u64)],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<StoreResult<_>>()?;
        drop_connections(&tx, &beyond).await?;
        tx.commit().await.map_err(backend)?;
        Ok(u(conn_key))
    }

    async fn sliding_position(
        &self,
        owner: ConnectionOwner<'_>,
        conn_key: u64,
        pos: u64,
        with_rooms: bool,
    ) -> StoreResult<SlidingPosition> {
        let mut client = self.client().await?;
        // One snapshot for both reads.
        let tx = client.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
        let tx = tx.start().await.map_err(backend)?;
        let row = query_opt(
            &tx,
            "SELECT p.token FROM sliding_sync_connections c
             JOIN sliding_sync_positions p ON p.conn_key = c.conn_key AND p.pos = $5
             WHERE c.conn_key = $4 AND c.user_id = $1 AND c.device_id = $2 AND c.conn_id = $3",
            &[&owner.user_id, &owner.device_id, &owner.conn_id, &i(conn_key), &i(pos)],
        )
        .await?
        .ok_or(StoreError::UnknownPosition)?;
        let token: String = get(&row, 0)?;
        let rooms = if with_rooms { rooms_at(&tx, i(conn_key), i(pos)).await? } else { Vec::new() };
        tx.commit().await.map_err(backend)?;
        Ok(SlidingPosition { conn_key, pos, token, rooms })
    }

    async fn record_sliding_answer(
        &self,
        conn_key: u64,
        base_pos: u64,
        token: &str,
        rooms: &[SentRoom],
        now_ts: u64,
    ) -> StoreResult<u64> {
        let (key, base) = (i(conn_key), i(base_pos));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Answers of one connection are recorded one at a time.
        let next: i64 = get(
            &query_opt(&tx, "SELECT next_pos FROM sliding_sync_connections WHERE conn_key = $1 FOR UPDATE", &[&key])
                .await?
                .ok_or(StoreError::UnknownPosition)?,
            0,
        )?;
        if base_pos != 0
            && query_opt(&tx, "SELECT 1 FROM sliding_sync_positions WHERE conn_key = $1 AND pos = $2", &[&key, &base])
                .await?
                .is_none()
        {
            return Err(StoreError::UnknownPosition);
        }
        // What the client can no longer ask for: positions but the base,
        // records after it, and those the base's own superseded (every
        // earlier position was a base once, so nothing older is left).
        execute(
            &tx,
            "WITH p AS (DELETE FROM sliding_sync_positions WHERE conn_key = $1 AND pos <> $2),
                  later AS (DELETE FROM sliding_sync_rooms WHERE conn_key = $1 AND pos > $2)
             DELETE FROM sliding_sync_rooms WHERE conn_key = $1 AND pos < $2
               AND room_id IN (SELECT room_id FROM sliding_sync_rooms WHERE conn_key = $1 AND pos = $2)",
            &[&key, &base],
        )
        .await
        .map_err(backend)?;
        let room_ids: Vec<&str> = rooms.iter().map(|r| r.room_id.as_str()).collect();
        let records: Vec<&str> = rooms.iter().map(|r| r.record.as_str()).collect();
        execute(
            &tx,
            "WITH c AS (UPDATE sliding_sync_connections SET next_pos = $2::bigint + 1, last_used_ts = $4 WHERE conn_key = $1),
                  p AS (INSERT INTO sliding_sync_positions (conn_key, pos, token) VALUES ($1, $2, $3))
             INSERT INTO sliding_sync_rooms (conn_key, room_id, pos, record)
             SELECT $1, x.r, $2, x.c FROM UNNEST($5::text[], $6::text[]) AS x(r, c)",
            &[&key, &next, &token, &i(now_ts), &room_ids, &records],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                StoreError::Contract("two records of one room in one answer")
            } else {
                backend(e)
            }
        })?;
        tx.commit().await.map_err(backend)?;
        Ok(u(next))
    }

    async fn expire_sliding_connections(&self, before_ts: u64, max: usize) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let keys: Vec<i64> = query(
            &tx,
            "SELECT conn_key FROM sliding_sync_connections WHERE last_used_ts < $1
             ORDER BY last_used_ts LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&i(before_ts), &i(max as u64)],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<StoreResult<_>>()?;
        drop_connections(&tx, &keys).await?;
        tx.commit().await.map_err(backend)?;
        Ok(keys.len() as u64)
    }
}
