//! `DelayedEventStore` on SQLite: delayed events (MSC4140). One writer
//! connection serialises every write, so a claim is a read and an update
//! in one transaction that no other write interleaves with.

use async_trait::async_trait;
use chancery_store::{DelayedEvent, DelayedEventStore, StoreError, StoreResult};
use chancery_store_sql::rows::{self, DELAYED_EVENT_COLUMNS};
use chancery_store_sql::{i, u};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

fn read_one(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DelayedEvent, String)> {
    rows::delayed_event(&SqliteRow(r))
}

fn scheduled(tx: &Transaction<'_>, delay_id: &str) -> StoreResult<Option<DelayedEvent>> {
    tx.query_row(
        &format!("SELECT {DELAYED_EVENT_COLUMNS} FROM delayed_events WHERE delay_id = ?1 AND claimed = 0"),
        [delay_id],
        read_one,
    )
    .optional()
    .map_err(backend)?
    .map(rows::delayed_event_content)
    .transpose()
}

#[async_trait]
impl DelayedEventStore for SqliteStore {
    async fn schedule_delayed_event(&self, event: &DelayedEvent, max_per_user: usize) -> StoreResult<String> {
        let event = event.clone();
        let content = serde_json::to_string(&event.content).map_err(|e| StoreError::Backend(format!("delayed event: {e}")))?;
        self.write(move |tx| {
            if let Some(txn_id) = &event.txn_id {
                let existing: Option<String> = tx
                    .query_row(
                        "SELECT delay_id FROM delayed_events WHERE user_id = ?1 AND device_id = ?2 AND txn_id = ?3",
                        params![event.user_id, event.device_id, txn_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if let Some(delay_id) = existing {
                    return Ok(delay_id);
                }
            }
            let (count, earliest): (i64, Option<i64>) = tx
                .query_row("SELECT COUNT(*), MIN(send_ts) FROM delayed_events WHERE user_id = ?1", [&event.user_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(backend)?;
            if chancery_store_sql::params::reaches_limit(count, max_per_user) {
                return Err(StoreError::TooManyDelayedEvents { next_send_ts: earliest.map(u).unwrap_or(0) });
            }
            tx.execute(
                "INSERT INTO delayed_events
                   (delay_id, user_id, device_id, room_id, event_type, state_key, content, delay_ms, send_ts, txn_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    event.delay_id,
                    event.user_id,
                    event.device_id,
                    event.room_id,
                    event.event_type,
                    event.state_key,
                    content,
                    i(event.delay_ms),
                    i(event.send_ts),
                    event.txn_id
                ],
            )
            .map_err(|e| {
                if crate::accounts::is_unique_violation(&e) {
                    StoreError::Contract("a delay id was scheduled twice")
                } else {
                    backend(e)
                }
            })?;
            Ok(event.delay_id)
        })
        .await
    }

    async fn delayed_events_of_user(&self, user_id: &str, limit: usize) -> StoreResult<Vec<DelayedEvent>> {
        let user_id = user_id.to_owned();
        let limit = i(u64::try_from(limit).unwrap_or(u64::MAX));
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {DELAYED_EVENT_COLUMNS} FROM delayed_events WHERE user_id = ?1 AND claimed = 0
                     ORDER BY send_ts, delay_id LIMIT ?2"
                ))
                .map_err(backend)?;
            let found = stmt
                .query_map(params![user_id, limit], read_one)
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            found.into_iter().map(rows::delayed_event_content).collect()
        })
        .await
    }

    async fn restart_delayed_event(&self, delay_id: &str, now_ts: u64) -> StoreResult<Option<u64>> {
        let delay_id = delay_id.to_owned();
        self.write(move |tx| {
            tx.query_row(
                "UPDATE delayed_events SET send_ts = ?2 + delay_ms WHERE delay_id = ?1 AND claimed = 0 RETURNING send_ts",
                params![delay_id, i(now_ts)],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|ts| ts.map(u))
            .map_err(backend)
        })
        .await
    }

    async fn cancel_delayed_event(&self, delay_id: &str) -> StoreResult<bool> {
        let delay_id = delay_id.to_owned();
        self.write(move |tx| {
            let n = tx.execute("DELETE FROM delayed_events WHERE delay_id = ?1 AND claimed = 0", [delay_id]).map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn claim_delayed_event(&self, delay_id: &str, lease_until_ts: u64) -> StoreResult<Option<DelayedEvent>> {
        let delay_id = delay_id.to_owned();
        self.write(move |tx| {
            let Some(event) = scheduled(tx, &delay_id)? else { return Ok(None) };
            tx.execute(
                "UPDATE delayed_events SET claimed = 1, send_ts = ?2 WHERE delay_id = ?1",
                params![delay_id, i(lease_until_ts)],
            )
            .map_err(backend)?;
            Ok(Some(event))
        })
        .await
    }

    async fn claim_due_delayed_events(&self, now_ts: u64, lease_until_ts: u64, limit: usize) -> StoreResult<Vec<DelayedEvent>> {
        let limit = i(u64::try_from(limit).unwrap_or(u64::MAX));
        self.write(move |tx| {
            let due = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT {DELAYED_EVENT_COLUMNS} FROM delayed_events WHERE send_ts <= ?1
                         ORDER BY send_ts, delay_id LIMIT ?2"
                    ))
                    .map_err(backend)?;
                stmt.query_map(params![i(now_ts), limit], read_one)
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?
            };
            let mut claimed = Vec::with_capacity(due.len());
            for found in due {
                let event = rows::delayed_event_content(found)?;
                tx.execute(
                    "UPDATE delayed_events SET claimed = 1, send_ts = ?2 WHERE delay_id = ?1",
                    params![event.delay_id, i(lease_until_ts)],
                )
                .map_err(backend)?;
                claimed.push(event);
            }
            Ok(claimed)
        })
        .await
    }

    async fn release_delayed_event(&self, delay_id: &str, send_ts: u64) -> StoreResult<()> {
        let delay_id = delay_id.to_owned();
        self.write(move |tx| {
            tx.execute("UPDATE delayed_events SET claimed = 0, send_ts = ?2 WHERE delay_id = ?1", params![delay_id, i(send_ts)])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn finish_delayed_event(&self, delay_id: &str) -> StoreResult<()> {
        let delay_id = delay_id.to_owned();
        self.write(move |tx| {
            tx.execute("DELETE FROM delayed_events WHERE delay_id = ?1", [delay_id]).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn next_delayed_event_ts(&self) -> StoreResult<Option<u64>> {
        self.read(|conn| {
            conn.query_row("SELECT MIN(send_ts) FROM delayed_events", [], |r| r.get::<_, Option<i64>>(0))
                .map(|ts| ts.map(u))
                .map_err(backend)
        })
        .await
    }
}
