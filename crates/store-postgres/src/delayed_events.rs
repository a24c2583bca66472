//! `DelayedEventStore` on PostgreSQL: delayed events (MSC4140). A user's
//! count is checked under an advisory lock of the user, so nodes cannot
//! pass the limit together; claims take rows with `FOR UPDATE SKIP
//! LOCKED`, so two nodes never claim the same row and neither waits on
//! the other's.

use async_trait::async_trait;
use chancery_store::{DelayedEvent, DelayedEventStore, StoreError, StoreResult};
use chancery_store_sql::rows::{self, DELAYED_EVENT_COLUMNS};
use chancery_store_sql::{i, u};
use tokio_postgres::error::SqlState;

use crate::query::{PgRow, execute, query, query_opt};
use crate::{PostgresStore, backend};

fn read_all(found: Vec<tokio_postgres::Row>) -> StoreResult<Vec<DelayedEvent>> {
    found.iter().map(|r| rows::delayed_event(&PgRow(r)).and_then(rows::delayed_event_content)).collect()
}

#[async_trait]
impl DelayedEventStore for PostgresStore {
    async fn schedule_delayed_event(&self, event: &DelayedEvent, max_per_user: usize) -> StoreResult<String> {
        let content = serde_json::to_string(&event.content).map_err(|e| StoreError::Backend(format!("delayed event: {e}")))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        execute(&tx, "SELECT pg_advisory_xact_lock(hashtext('delayed:' || $1))", &[&event.user_id]).await.map_err(backend)?;
        if let Some(txn_id) = &event.txn_id {
            let existing = query_opt(
                &tx,
                "SELECT delay_id FROM delayed_events WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
                &[&event.user_id, &event.device_id, txn_id],
            )
            .await?;
            if let Some(row) = existing {
                return crate::query::get(&row, 0);
            }
        }
        let counted = query_opt(&tx, "SELECT COUNT(*), MIN(send_ts) FROM delayed_events WHERE user_id = $1", &[&event.user_id])
            .await?
            .ok_or(StoreError::Contract("COUNT answers one row"))?;
        let count: i64 = crate::query::get(&counted, 0)?;
        let earliest: Option<i64> = crate::query::get(&counted, 1)?;
        if chancery_store_sql::params::reaches_limit(count, max_per_user) {
            return Err(StoreError::TooManyDelayedEvents { next_send_ts: earliest.map(u).unwrap_or(0) });
        }
        execute(
            &tx,
            "INSERT INTO delayed_events
               (delay_id, user_id, device_id, room_id, event_type, state_key, content, delay_ms, send_ts, txn_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &event.delay_id,
                &event.user_id,
                &event.device_id,
                &event.room_id,
                &event.event_type,
                &event.state_key,
                &content,
                &i(event.delay_ms),
                &i(event.send_ts),
                &event.txn_id,
            ],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                StoreError::Contract("a delay id was scheduled twice")
            } else {
                backend(e)
            }
        })?;
        tx.commit().await.map_err(backend)?;
        Ok(event.delay_id.clone())
    }

    async fn delayed_events_of_user(&self, user_id: &str, limit: usize) -> StoreResult<Vec<DelayedEvent>> {
        let client = self.client().await?;
        let limit = i(u64::try_from(limit).unwrap_or(u64::MAX));
        let sql = format!(
            "SELECT {DELAYED_EVENT_COLUMNS} FROM delayed_events WHERE user_id = $1 AND NOT claimed
             ORDER BY send_ts, delay_id LIMIT $2"
        );
        read_all(query(&client, &sql, &[&user_id, &limit]).await?)
    }

    async fn restart_delayed_event(&self, delay_id: &str, now_ts: u64) -> StoreResult<Option<u64>> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "UPDATE delayed_events SET send_ts = $2 + delay_ms WHERE delay_id = $1 AND NOT claimed RETURNING send_ts",
            &[&delay_id, &i(now_ts)],
        )
        .await?;
        row.map(|r| crate::query::get::<i64>(&r, 0).map(u)).transpose()
    }

    async fn cancel_delayed_event(&self, delay_id: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = execute(&client, "DELETE FROM delayed_events WHERE delay_id = $1 AND NOT claimed", &[&delay_id])
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn claim_delayed_event(&self, delay_id: &str, lease_until_ts: u64) -> StoreResult<Option<DelayedEvent>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let sql = format!("SELECT {DELAYED_EVENT_COLUMNS} FROM delayed_events WHERE delay_id = $1 AND NOT claimed FOR UPDATE");
        let Some(row) = query_opt(&tx, &sql, &[&delay_id]).await? else { return Ok(None) };
        let event = rows::delayed_event(&PgRow(&row)).and_then(rows::delayed_event_content)?;
        execute(
            &tx,
            "UPDATE delayed_events SET claimed = TRUE, send_ts = $2 WHERE delay_id = $1",
            &[&delay_id, &i(lease_until_ts)],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(event))
    }

    async fn claim_due_delayed_events(&self, now_ts: u64, lease_until_ts: u64, limit: usize) -> StoreResult<Vec<DelayedEvent>> {
        let client = self.client().await?;
        let limit = i(u64::try_from(limit).unwrap_or(u64::MAX));
        // The claimed rows as they were before the update (send_ts aside,
        // which a due row no longer needs).
        let sql = format!(
            "UPDATE delayed_events SET claimed = TRUE, send_ts = $2
             WHERE delay_id IN (SELECT delay_id FROM delayed_events WHERE send_ts <= $1
                                ORDER BY send_ts, delay_id LIMIT $3 FOR UPDATE SKIP LOCKED)
               AND send_ts <= $1
             RETURNING {DELAYED_EVENT_COLUMNS}"
        );
        let mut claimed = read_all(query(&client, &sql, &[&i(now_ts), &i(lease_until_ts), &limit]).await?)?;
        claimed.sort_by(|a, b| a.delay_id.cmp(&b.delay_id));
        Ok(claimed)
    }

    async fn release_delayed_event(&self, delay_id: &str, send_ts: u64) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE delayed_events SET claimed = FALSE, send_ts = $2 WHERE delay_id = $1",
            &[&delay_id, &i(send_ts)],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn finish_delayed_event(&self, delay_id: &str) -> StoreResult<()> {
        let client = self.client().await?;
        execute(&client, "DELETE FROM delayed_events WHERE delay_id = $1", &[&delay_id]).await.map_err(backend)?;
        Ok(())
    }

    async fn next_delayed_event_ts(&self) -> StoreResult<Option<u64>> {
        let client = self.client().await?;
        let row = query_opt(&client, "SELECT MIN(send_ts) FROM delayed_events", &[])
            .await?
            .ok_or(StoreError::Contract("MIN answers one row"))?;
        Ok(crate::query::get::<Option<i64>>(&row, 0)?.map(u))
    }
}
