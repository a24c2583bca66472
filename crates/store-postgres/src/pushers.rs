//! `PusherStore` on PostgreSQL. Several nodes deliver: a claim is a
//! conditional update of the lease (a concurrent claimer waits on the row
//! and then finds it taken), and progress is written only under the
//! lease. `queued_pos` is raised by the append's statement (`rooms.rs`,
//! under the stream lock), so it moves in position order.

use async_trait::async_trait;
use chancery_store::*;
use deadpool_postgres::GenericClient;

use chancery_store_sql::rows::{self, CLAIMED_PUSHER_STATE, EVENT_COLUMNS, PUSHER_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::push::NOTIFIED_ROOMS;
use crate::query::{PgRow, execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// The user's (`$1`) read position in the room `{room}` names: their
/// newest own event there or their unthreaded/`main` read receipt,
/// whichever is later (as `PushStore::read_up_to`).
fn read_position(room: &str) -> String {
    format!(
        "GREATEST(
            COALESCE((SELECT MAX(stream_pos) FROM events WHERE room_id = {room} AND sender = $1), 0),
            COALESCE((SELECT MAX(e2.stream_pos) FROM receipts rc JOIN events e2 ON e2.event_id = rc.event_id
                      WHERE rc.room_id = {room} AND rc.user_id = $1 AND rc.receipt_type IN ('m.read', 'm.read.private')
                        AND rc.thread_id IN ('', 'main')), 0))"
    )
}

async fn set_in(tx: &impl GenericClient, p: &NewPusher, append: bool, max_per_user: usize) -> StoreResult<()> {
    // The account row first, as device deletions lock it: a deletion of
    // this device either finished (the device is gone) or waits for this.
    crate::accounts::lock_account(tx, &p.user_id).await?;
    let device =
        query_opt(tx, "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2", &[&p.user_id, &p.device_id]).await?;
    if device.is_none() {
        return Err(StoreError::UnknownDevice);
    }
    if !append {
        execute(
            tx,
            "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
            &[&p.app_id, &p.pushkey, &p.user_id],
        )
        .await
        .map_err(backend)?;
    }
    let now = i(p.now_ts);
    let updated = execute(
        tx,
        "UPDATE pushers SET device_id = $4, kind = $5, app_display_name = $6, device_display_name = $7,
             profile_tag = $8, lang = $9, data = $10, pushkey_ts = $11, failures = 0, retry_at_ts = 0
         WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
        &[
            &p.user_id,
            &p.app_id,
            &p.pushkey,
            &p.device_id,
            &p.kind,
            &p.app_display_name,
            &p.device_display_name,
            &p.profile_tag,
            &p.lang,
            &p.data_json,
            &now,
        ],
    )
    .await
    .map_err(backend)?;
    if updated > 0 {
        return Ok(());
    }
    let count: i64 =
        get(&query_opt(tx, "SELECT COUNT(*) FROM pushers WHERE user_id = $1", &[&p.user_id]).await?.ok_or_else(no_row)?, 0)?;
    if chancery_store_sql::params::reaches_limit(count, max_per_user) {
        return Err(StoreError::TooManyPushers);
    }
    // The last position handed out: an append committing after this read
    // with a notification for the user was (as far as the pusher goes)
    // sent before it existed.
    execute(
        tx,
        "INSERT INTO pushers (user_id, device_id, app_id, pushkey, kind, app_display_name, device_display_name,
                              profile_tag, lang, data, pushkey_ts, delivered_pos, queued_pos)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, pos, pos FROM stream_position",
        &[
            &p.user_id,
            &p.device_id,
            &p.app_id,
            &p.pushkey,
            &p.kind,
            &p.app_display_name,
            &p.device_display_name,
            &p.profile_tag,
            &p.lang,
            &p.data_json,
            &now,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

fn no_row() -> StoreError {
    StoreError::Backend("an aggregate returned no row".into())
}

#[async_trait]
impl PusherStore for PostgresStore {
    async fn pushers(&self, user_id: &str) -> StoreResult<Vec<Pusher>> {
        let client = self.client().await?;
        let sql = format!("SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey");
        query(&client, &sql, &[&user_id]).await?.iter().map(|r| rows::pusher(&PgRow(r))).collect()
    }

    async fn set_pusher(&self, pusher: NewPusher, append: bool, max_per_user: usize) -> StoreResult<()> {
        // Deleting other users' pushers of the pushkey takes their rows,
        // which an append may hold while it raises their queues: a
        // deadlock between the two is run again.
        retry::conflicts(|| async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            set_in(&tx, &pusher, append, max_per_user).await?;
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
            &[&user_id, &app_id, &pushkey],
        )
        .await
        .map_err(backend)?;
        Ok(n > 0)
    }

    async fn delete_rejected_pusher(&self, id: u64, pushkey_ts: u64) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = execute(&client, "DELETE FROM pushers WHERE id = $1 AND pushkey_ts = $2", &[&i(id), &i(pushkey_ts)])
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn pushers_due(&self, now_ts: u64, limit: usize) -> StoreResult<DuePushers> {
        let client = self.client().await?;
        let now = i(now_ts);
        let due = query(
            &client,
            "SELECT id FROM pushers
             WHERE queued_pos > delivered_pos AND retry_at_ts <= $1 AND lease_until_ts <= $1
             ORDER BY retry_at_ts, id LIMIT $2",
            &[&now, &i(limit as u64)],
        )
        .await?;
        let next = query_opt(
            &client,
            "SELECT MIN(GREATEST(retry_at_ts, lease_until_ts)) FROM pushers
             WHERE queued_pos > delivered_pos AND (retry_at_ts > $1 OR lease_until_ts > $1)",
            &[&now],
        )
        .await?;
        Ok(DuePushers {
            due: due.iter().map(|r| get::<i64>(r, 0).map(u)).collect::<StoreResult<_>>()?,
            next_due_ts: next.map(|r| get::<Option<i64>>(&r, 0)).transpose()?.flatten().map(u),
        })
    }

    async fn claim_pusher(&self, id: u64, node: &str, now_ts: u64, lease_until_ts: u64) -> StoreResult<Option<ClaimedPusher>> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE pushers SET lease_owner = $2, lease_until_ts = $4
             WHERE id = $1 AND (lease_until_ts <= $3 OR lease_owner = $2)
             RETURNING {PUSHER_COLUMNS}, {CLAIMED_PUSHER_STATE}"
        );
        let row = query_opt(&client, &sql, &[&i(id), &node, &i(now_ts), &i(lease_until_ts)]).await?;
        row.map(|r| rows::claimed_pusher(&PgRow(&r))).transpose()
    }

    async fn record_delivery(
        &self,
        id: u64,
        node: &str,
        progress: DeliveryProgress,
        lease_until_ts: u64,
    ) -> StoreResult<Option<u64>> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "UPDATE pushers SET delivered_pos = $3, failures = $4, retry_at_ts = $5, lease_until_ts = $6::bigint,
                 lease_owner = CASE WHEN $6::bigint = 0 THEN NULL ELSE lease_owner END
             WHERE id = $1 AND lease_owner = $2
             RETURNING queued_pos",
            &[
                &i(id),
                &node,
                &i(progress.delivered_pos),
                &i64::from(progress.failures),
                &i(progress.retry_at_ts),
                &i(lease_until_ts),
            ],
        )
        .await?;
        row.map(|r| get::<i64>(&r, 0).map(u)).transpose()
    }

    async fn queued_notifications(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<QueuedNotification>> {
        let (_heavy, client) = self.heavy_client().await?;
        // The oldest of each of the user's rooms (found by skipping through
        // the key), merged.
        let read = read_position("n.room_id");
        let sql = format!(
            "WITH RECURSIVE {NOTIFIED_ROOMS}
             SELECT {EVENT_COLUMNS}, n.actions, n.highlight, n.stream_pos <= {read}
             FROM rooms
             CROSS JOIN LATERAL (
                 SELECT * FROM notifications n
                 WHERE n.user_id = $1 AND n.room_id = rooms.room_id AND n.stream_pos > $2 AND n.stream_pos <= $3
                 ORDER BY n.stream_pos LIMIT $4
             ) n
             JOIN events e ON e.stream_pos = n.stream_pos {REDACTION_JOIN}
             ORDER BY n.stream_pos LIMIT $4"
        );
        let rows = query(&client, &sql, &[&user_id, &i(after), &i(up_to), &i(limit as u64)]).await?;
        rows.iter().map(|r| rows::queued_notification(&PgRow(r))).collect()
    }

    async fn badge_counts(&self, user_id: &str) -> StoreResult<BadgeCounts> {
        let (_heavy, client) = self.heavy_client().await?;
        let invites = query_opt(
            &client,
            "SELECT COUNT(*) FROM room_state
             WHERE state_key = $1 AND event_type = 'm.room.member' AND to_pos IS NULL AND membership = 'invite'",
            &[&user_id],
        )
        .await?
        .ok_or_else(no_row)?;
        let read = read_position("rooms.room_id");
        let sql = format!(
            "WITH RECURSIVE {NOTIFIED_ROOMS}
             SELECT (SELECT COUNT(*) FROM notifications n
                     WHERE n.user_id = $1 AND n.room_id = rooms.room_id AND n.stream_pos > {read})
             FROM rooms
             WHERE rooms.room_id IS NOT NULL
               AND EXISTS (SELECT 1 FROM room_state s
                           WHERE s.room_id = rooms.room_id AND s.event_type = 'm.room.member' AND s.state_key = $1
                             AND s.to_pos IS NULL AND s.membership = 'join')"
        );
        let counts = query(&client, &sql, &[&user_id]).await?;
        Ok(BadgeCounts {
            invites: u(get::<i64>(&invites, 0)?),
            unread_per_room: counts
                .iter()
                .map(|r| get::<i64>(r, 0).map(u))
                .filter(|n| !matches!(n, Ok(0)))
                .collect::<StoreResult<_>>()?,
        })
    }
}
