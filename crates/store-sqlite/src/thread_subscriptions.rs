//! `ThreadSubscriptionStore` on SQLite. Writes run on the single writer
//! connection, so the read of the thread's row, the decision and the
//! position taken from the stream's counter cannot be overtaken, and
//! positions become visible in order.

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::{i, u};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::{SqliteStore, backend};

/// Takes the stream's next position.
fn next_pos(tx: &Transaction<'_>) -> StoreResult<u64> {
    tx.prepare_cached("UPDATE thread_subscriptions_position SET pos = pos + 1 WHERE id = 0 RETURNING pos")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(u)
        .map_err(backend)
}

#[async_trait]
impl ThreadSubscriptionStore for SqliteStore {
    async fn subscribe_to_thread(
        &self,
        user_id: &str,
        room_id: &str,
        thread_root_id: &str,
        automatic_cause_pos: Option<u64>,
        max_per_user: usize,
    ) -> StoreResult<SubscribeOutcome> {
        let (user_id, room_id, thread_root_id) = (user_id.to_owned(), room_id.to_owned(), thread_root_id.to_owned());
        self.write(move |tx| {
            let current = tx
                .prepare_cached(
                    "SELECT subscribed, automatic, unsubscribed_at_pos FROM thread_subscriptions
                     WHERE user_id = ?1 AND room_id = ?2 AND thread_root_id = ?3",
                )
                .and_then(|mut s| {
                    s.query_row([&user_id, &room_id, &thread_root_id], |r| {
                        Ok(StoredThreadSubscription {
                            subscribed: r.get(0)?,
                            automatic: r.get(1)?,
                            unsubscribed_at_pos: r.get::<_, Option<i64>>(2)?.map(u),
                        })
                    })
                    .optional()
                })
                .map_err(backend)?;
            match decide_subscribe(current, automatic_cause_pos) {
                SubscribeDecision::Unchanged => return Ok(SubscribeOutcome::Unchanged),
                SubscribeDecision::Conflict => return Ok(SubscribeOutcome::ConflictsWithUnsubscription),
                SubscribeDecision::Write => {}
            }
            if current.is_none() {
                let held: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM thread_subscriptions WHERE user_id = ?1")
                    .and_then(|mut s| s.query_row([&user_id], |r| r.get(0)))
                    .map_err(backend)?;
                if chancery_store_sql::params::reaches_limit(held, max_per_user) {
                    return Err(StoreError::TooManyThreadSubscriptions);
                }
            }
            let pos = next_pos(tx)?;
            tx.prepare_cached(
                "INSERT INTO thread_subscriptions (user_id, room_id, thread_root_id, subscribed, automatic, unsubscribed_at_pos, stream_pos)
                 VALUES (?1, ?2, ?3, 1, ?4, NULL, ?5)
                 ON CONFLICT (user_id, room_id, thread_root_id) DO UPDATE SET subscribed = 1, automatic = excluded.automatic,
                     unsubscribed_at_pos = NULL, stream_pos = excluded.stream_pos",
            )
            .and_then(|mut s| s.execute(params![user_id, room_id, thread_root_id, automatic_cause_pos.is_some(), i(pos)]))
            .map_err(backend)?;
            Ok(SubscribeOutcome::Subscribed(pos))
        })
        .await
    }

    async fn unsubscribe_from_thread(&self, user_id: &str, room_id: &str, thread_root_id: &str) -> StoreResult<Option<u64>> {
        let (user_id, room_id, thread_root_id) = (user_id.to_owned(), room_id.to_owned(), thread_root_id.to_owned());
        self.write(move |tx| {
            let subscribed: Option<bool> = tx
                .prepare_cached(
                    "SELECT subscribed FROM thread_subscriptions WHERE user_id = ?1 AND room_id = ?2 AND thread_root_id = ?3",
                )
                .and_then(|mut s| s.query_row([&user_id, &room_id, &thread_root_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            if subscribed != Some(true) {
                return Ok(None);
            }
            let pos = next_pos(tx)?;
            tx.prepare_cached(
                "UPDATE thread_subscriptions SET subscribed = 0, automatic = 0, stream_pos = ?4,
                     unsubscribed_at_pos = (SELECT last_pos FROM rooms WHERE room_id = ?2)
                 WHERE user_id = ?1 AND room_id = ?2 AND thread_root_id = ?3",
            )
            .and_then(|mut s| s.execute(params![user_id, room_id, thread_root_id, i(pos)]))
            .map_err(backend)?;
            Ok(Some(pos))
        })
        .await
    }

    async fn thread_subscription(&self, user_id: &str, room_id: &str, thread_root_id: &str) -> StoreResult<Option<bool>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT automatic FROM thread_subscriptions
                 WHERE user_id = ?1 AND room_id = ?2 AND thread_root_id = ?3 AND subscribed = 1",
            )
            .and_then(|mut s| s.query_row([user_id, room_id, thread_root_id], |r| r.get(0)).optional())
            .map_err(backend)
        })
        .await
    }

    async fn thread_subscribers(&self, room_id: &str, thread_root_id: &str) -> StoreResult<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id FROM thread_subscriptions
                     WHERE room_id = ?1 AND thread_root_id = ?2 AND subscribed = 1 ORDER BY user_id",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([room_id, thread_root_id], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(backend)
        })
        .await
    }

    async fn thread_subscription_changes(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<ThreadSubscriptionChange>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT room_id, thread_root_id, subscribed, automatic, stream_pos FROM thread_subscriptions
                     WHERE user_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3
                     ORDER BY stream_pos DESC LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![user_id, i(after), i(up_to), i(limit as u64)], |r| {
                    Ok(ThreadSubscriptionChange {
                        room_id: r.get(0)?,
                        thread_root_id: r.get(1)?,
                        subscribed: r.get(2)?,
                        automatic: r.get(3)?,
                        stream_pos: u(r.get(4)?),
                    })
                })
                .map_err(backend)?;
            let mut changes = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
            changes.reverse();
            Ok(changes)
        })
        .await
    }
}
