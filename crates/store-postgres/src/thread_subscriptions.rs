//! `ThreadSubscriptionStore` on PostgreSQL. A write is one READ COMMITTED
//! transaction that first takes the stream's advisory lock (held until
//! commit), then reads the thread's row, decides, and writes the row at
//! the position taken from the `thread_subscriptions` row of
//! `stream_counters`. Writes of the stream therefore go one at a time
//! (they are rare: a user's click or their client's), positions commit in
//! order on every node, and the counter is the "everything at or below is
//! visible" watermark.

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::{i, u};

use crate::query::{execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// Advisory-lock key held by every thread-subscription write until commit
/// ("chanthrd" in ASCII).
const THREAD_SUBSCRIPTIONS_STREAM_LOCK: i64 = 0x6368_616e_7468_7264;

const NEXT_POS: &str = "UPDATE stream_counters SET pos = pos + 1 WHERE stream = 'thread_subscriptions' RETURNING pos";

async fn next_pos(tx: &deadpool_postgres::Transaction<'_>) -> StoreResult<u64> {
    let row = query_opt(tx, NEXT_POS, &[]).await?.ok_or_else(|| StoreError::Backend("no thread_subscriptions counter".into()))?;
    Ok(u(get(&row, 0)?))
}

async fn lock(tx: &deadpool_postgres::Transaction<'_>) -> StoreResult<()> {
    execute(tx, "SELECT pg_advisory_xact_lock($1)", &[&THREAD_SUBSCRIPTIONS_STREAM_LOCK]).await.map_err(backend)?;
    Ok(())
}

#[async_trait]
impl ThreadSubscriptionStore for PostgresStore {
    async fn subscribe_to_thread(
        &self,
        user_id: &str,
        room_id: &str,
        thread_root_id: &str,
        automatic_cause_pos: Option<u64>,
        max_per_user: usize,
    ) -> StoreResult<SubscribeOutcome> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock(&tx).await?;
        let current = query_opt(
            &tx,
            "SELECT subscribed, automatic, unsubscribed_at_pos FROM thread_subscriptions
             WHERE user_id = $1 AND room_id = $2 AND thread_root_id = $3",
            &[&user_id, &room_id, &thread_root_id],
        )
        .await?
        .map(|r| {
            Ok::<_, StoreError>(StoredThreadSubscription {
                subscribed: get(&r, 0)?,
                automatic: get(&r, 1)?,
                unsubscribed_at_pos: get::<Option<i64>>(&r, 2)?.map(u),
            })
        })
        .transpose()?;
        match decide_subscribe(current, automatic_cause_pos) {
            SubscribeDecision::Unchanged => return Ok(SubscribeOutcome::Unchanged),
            SubscribeDecision::Conflict => return Ok(SubscribeOutcome::ConflictsWithUnsubscription),
            SubscribeDecision::Write => {}
        }
        if current.is_none() {
            let row = query_opt(&tx, "SELECT COUNT(*) FROM thread_subscriptions WHERE user_id = $1", &[&user_id])
                .await?
                .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
            if chancery_store_sql::params::reaches_limit(get(&row, 0)?, max_per_user) {
                return Err(StoreError::TooManyThreadSubscriptions);
            }
        }
        let pos = next_pos(&tx).await?;
        execute(
            &tx,
            "INSERT INTO thread_subscriptions (user_id, room_id, thread_root_id, subscribed, automatic, unsubscribed_at_pos, stream_pos)
             VALUES ($1, $2, $3, TRUE, $4, NULL, $5)
             ON CONFLICT (user_id, room_id, thread_root_id) DO UPDATE SET subscribed = TRUE, automatic = EXCLUDED.automatic,
                 unsubscribed_at_pos = NULL, stream_pos = EXCLUDED.stream_pos",
            &[&user_id, &room_id, &thread_root_id, &automatic_cause_pos.is_some(), &i(pos)],
        )
        .await
        .map_err(backend)?;
        crate::notify::notify_in(&tx).await?;
        tx.commit().await.map_err(backend)?;
        Ok(SubscribeOutcome::Subscribed(pos))
    }

    async fn unsubscribe_from_thread(&self, user_id: &str, room_id: &str, thread_root_id: &str) -> StoreResult<Option<u64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock(&tx).await?;
        let subscribed = query_opt(
            &tx,
            "SELECT subscribed FROM thread_subscriptions WHERE user_id = $1 AND room_id = $2 AND thread_root_id = $3",
            &[&user_id, &room_id, &thread_root_id],
        )
        .await?
        .map(|r| get::<bool>(&r, 0))
        .transpose()?;
        if subscribed != Some(true) {
            return Ok(None);
        }
        let pos = next_pos(&tx).await?;
        execute(
            &tx,
            "UPDATE thread_subscriptions SET subscribed = FALSE, automatic = FALSE, stream_pos = $4,
                 unsubscribed_at_pos = (SELECT last_pos FROM rooms WHERE room_id = $2)
             WHERE user_id = $1 AND room_id = $2 AND thread_root_id = $3",
            &[&user_id, &room_id, &thread_root_id, &i(pos)],
        )
        .await
        .map_err(backend)?;
        crate::notify::notify_in(&tx).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(pos))
    }

    async fn thread_subscription(&self, user_id: &str, room_id: &str, thread_root_id: &str) -> StoreResult<Option<bool>> {
        let client = self.client().await?;
        query_opt(
            &client,
            "SELECT automatic FROM thread_subscriptions
             WHERE user_id = $1 AND room_id = $2 AND thread_root_id = $3 AND subscribed",
            &[&user_id, &room_id, &thread_root_id],
        )
        .await?
        .map(|r| get(&r, 0))
        .transpose()
    }

    async fn thread_subscribers(&self, room_id: &str, thread_root_id: &str) -> StoreResult<Vec<String>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT user_id FROM thread_subscriptions WHERE room_id = $1 AND thread_root_id = $2 AND subscribed ORDER BY user_id",
            &[&room_id, &thread_root_id],
        )
        .await?;
        rows.iter().map(|r| get(r, 0)).collect()
    }

    async fn thread_subscription_changes(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<ThreadSubscriptionChange>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT room_id, thread_root_id, subscribed, automatic, stream_pos FROM thread_subscriptions
             WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3
             ORDER BY stream_pos DESC LIMIT $4",
            &[&user_id, &i(after), &i(up_to), &i(limit as u64)],
        )
        .await?;
        let mut changes = rows
            .iter()
            .map(|r| {
                Ok(ThreadSubscriptionChange {
                    room_id: get(r, 0)?,
                    thread_root_id: get(r, 1)?,
                    subscribed: get(r, 2)?,
                    automatic: get(r, 3)?,
                    stream_pos: u(get(r, 4)?),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        changes.reverse();
        Ok(changes)
    }
}
