//! `PusherStore` on SQLite. Writes run on the single writer, so a claim
//! and a record are plain conditional updates; `queued_pos` is raised by
//! the append (see [`raise_queued_positions`]).

use async_trait::async_trait;
use chancery_store::*;
use rusqlite::{OptionalExtension, Transaction, params};

use chancery_store_sql::rows::{self, CLAIMED_PUSHER_STATE, EVENT_COLUMNS, PUSHER_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::rooms::collect;
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// The user's read position in room `r.room_id` (user `?1`): their newest
/// own event there or their unthreaded/`main` read receipt, whichever is
/// later (as `PushStore::read_up_to`).
const READ_POSITION: &str = "MAX(
    COALESCE((SELECT MAX(stream_pos) FROM events WHERE room_id = r.room_id AND sender = ?1), 0),
    COALESCE((SELECT MAX(e2.stream_pos) FROM receipts rc JOIN events e2 ON e2.event_id = rc.event_id
              WHERE rc.room_id = r.room_id AND rc.user_id = ?1 AND rc.receipt_type IN ('m.read', 'm.read.private')
                AND rc.thread_id IN ('', 'main')), 0))";

/// `r(room_id)`: the rooms user `?1` has notifications in, found by
/// skipping through the (user_id, room_id) key, with a NULL row last.
const NOTIFIED_ROOMS: &str = "r(room_id) AS (
    SELECT MIN(room_id) FROM notifications WHERE user_id = ?1
    UNION ALL
    SELECT (SELECT MIN(room_id) FROM notifications WHERE user_id = ?1 AND room_id > r.room_id)
    FROM r WHERE r.room_id IS NOT NULL
)";

/// Part of an event's append (same transaction): every pusher of the
/// users `notified` now has work up to `pos`.
pub(crate) fn raise_queued_positions(tx: &Transaction<'_>, notified: &[NewNotification], pos: i64) -> StoreResult<()> {
    if notified.is_empty() {
        return Ok(());
    }
    // One statement for every notified user: a send in a big room must
    // not cost a statement per member (most of whom have no pusher).
    let users = serde_json::to_string(&notified.iter().map(|n| n.user_id.as_str()).collect::<Vec<_>>())
        .map_err(|e| StoreError::Backend(format!("notified users: {e}")))?;
    tx.prepare_cached(
        "UPDATE pushers SET queued_pos = ?2
         WHERE queued_pos < ?2 AND user_id IN (SELECT value FROM json_each(?1))",
    )
    .and_then(|mut s| s.execute(params![users, pos]))
    .map_err(backend)?;
    Ok(())
}

/// Part of a device deletion (same transaction): the devices' pushers.
pub(crate) fn delete_pushers_of_device(conn: &rusqlite::Connection, user_id: &str, device_id: &str) -> StoreResult<()> {
    conn.prepare_cached("DELETE FROM pushers WHERE user_id = ?1 AND device_id = ?2")
        .and_then(|mut s| s.execute([user_id, device_id]))
        .map_err(backend)?;
    Ok(())
}

/// Part of a deactivation (same transaction): every pusher of the user.
pub(crate) fn delete_pushers_of_user(conn: &rusqlite::Connection, user_id: &str) -> StoreResult<()> {
    conn.prepare_cached("DELETE FROM pushers WHERE user_id = ?1").and_then(|mut s| s.execute([user_id])).map_err(backend)?;
    Ok(())
}

#[async_trait]
impl PusherStore for SqliteStore {
    async fn pushers(&self, user_id: &str) -> StoreResult<Vec<Pusher>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = ?1 ORDER BY app_id, pushkey");
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map([user_id], |r| rows::pusher(&SqliteRow(r))).map_err(backend)?)
        })
        .await
    }

    async fn set_pusher(&self, p: NewPusher, append: bool, max_per_user: usize) -> StoreResult<()> {
        self.write(move |tx| {
            let device = tx
                .prepare_cached("SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2")
                .and_then(|mut s| s.query_row([&p.user_id, &p.device_id], |_| Ok(())).optional())
                .map_err(backend)?;
            if device.is_none() {
                return Err(StoreError::UnknownDevice);
            }
            if !append {
                tx.prepare_cached("DELETE FROM pushers WHERE app_id = ?1 AND pushkey = ?2 AND user_id <> ?3")
                    .and_then(|mut s| s.execute([&p.app_id, &p.pushkey, &p.user_id]))
                    .map_err(backend)?;
            }
            let updated = tx
                .prepare_cached(
                    "UPDATE pushers SET device_id = ?4, kind = ?5, app_display_name = ?6, device_display_name = ?7,
                         profile_tag = ?8, lang = ?9, data = ?10, pushkey_ts = ?11, failures = 0, retry_at_ts = 0
                     WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        p.user_id,
                        p.app_id,
                        p.pushkey,
                        p.device_id,
                        p.kind,
                        p.app_display_name,
                        p.device_display_name,
                        p.profile_tag,
                        p.lang,
                        p.data_json,
                        i(p.now_ts)
                    ])
                })
                .map_err(backend)?;
            if updated > 0 {
                return Ok(());
            }
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM pushers WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([&p.user_id], |r| r.get(0)))
                .map_err(backend)?;
            if chancery_store_sql::params::reaches_limit(count, max_per_user) {
                return Err(StoreError::TooManyPushers);
            }
            // The writer is the only one: no event commits between this
            // read and the insert.
            tx.prepare_cached(
                "INSERT INTO pushers (user_id, device_id, app_id, pushkey, kind, app_display_name, device_display_name,
                                      profile_tag, lang, data, pushkey_ts, delivered_pos, queued_pos)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, p, p
                 FROM (SELECT COALESCE(MAX(stream_pos), 0) AS p FROM events)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.user_id,
                    p.device_id,
                    p.app_id,
                    p.pushkey,
                    p.kind,
                    p.app_display_name,
                    p.device_display_name,
                    p.profile_tag,
                    p.lang,
                    p.data_json,
                    i(p.now_ts)
                ])
            })
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StoreResult<bool> {
        let (user_id, app_id, pushkey) = (user_id.to_owned(), app_id.to_owned(), pushkey.to_owned());
        self.write(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3")
                .and_then(|mut s| s.execute([user_id, app_id, pushkey]))
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_rejected_pusher(&self, id: u64, pushkey_ts: u64) -> StoreResult<bool> {
        self.write(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM pushers WHERE id = ?1 AND pushkey_ts = ?2")
                .and_then(|mut s| s.execute(params![i(id), i(pushkey_ts)]))
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn pushers_due(&self, now_ts: u64, limit: usize) -> StoreResult<DuePushers> {
        self.read(move |conn| {
            let now = i(now_ts);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM pushers INDEXED BY pushers_with_work
                     WHERE queued_pos > delivered_pos AND retry_at_ts <= ?1 AND lease_until_ts <= ?1
                     ORDER BY retry_at_ts, id LIMIT ?2",
                )
                .map_err(backend)?;
            let due = collect::<i64>(stmt.query_map(params![now, i(limit as u64)], |r| r.get(0)).map_err(backend)?)?;
            let next: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(MAX(retry_at_ts, lease_until_ts)) FROM pushers INDEXED BY pushers_with_work
                     WHERE queued_pos > delivered_pos AND (retry_at_ts > ?1 OR lease_until_ts > ?1)",
                )
                .and_then(|mut s| s.query_row([now], |r| r.get(0)))
                .map_err(backend)?;
            Ok(DuePushers { due: due.into_iter().map(u).collect(), next_due_ts: next.map(u) })
        })
        .await
    }

    async fn claim_pusher(&self, id: u64, node: &str, now_ts: u64, lease_until_ts: u64) -> StoreResult<Option<ClaimedPusher>> {
        let node = node.to_owned();
        self.write(move |tx| {
            let sql = format!(
                "UPDATE pushers SET lease_owner = ?2, lease_until_ts = ?4
                 WHERE id = ?1 AND (lease_until_ts <= ?3 OR lease_owner = ?2)
                 RETURNING {PUSHER_COLUMNS}, {CLAIMED_PUSHER_STATE}"
            );
            tx.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_row(params![i(id), node, i(now_ts), i(lease_until_ts)], |r| rows::claimed_pusher(&SqliteRow(r)))
                        .optional()
                })
                .map_err(backend)
        })
        .await
    }

    async fn record_delivery(
        &self,
        id: u64,
        node: &str,
        progress: DeliveryProgress,
        lease_until_ts: u64,
    ) -> StoreResult<Option<u64>> {
        let node = node.to_owned();
        self.write(move |tx| {
            let queued: Option<i64> = tx
                .prepare_cached(
                    "UPDATE pushers SET delivered_pos = ?3, failures = ?4, retry_at_ts = ?5, lease_until_ts = ?6,
                         lease_owner = CASE WHEN ?6 = 0 THEN NULL ELSE lease_owner END
                     WHERE id = ?1 AND lease_owner = ?2
                     RETURNING queued_pos",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            i(id),
                            node,
                            i(progress.delivered_pos),
                            i64::from(progress.failures),
                            i(progress.retry_at_ts),
                            i(lease_until_ts)
                        ],
                        |r| r.get(0),
                    )
                    .optional()
                })
                .map_err(backend)?;
            Ok(queued.map(u))
        })
        .await
    }

    async fn queued_notifications(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<QueuedNotification>> {
        let user_id = user_id.to_owned();
        self.read_heavy(move |conn| {
            let mut rooms = conn
                .prepare_cached(&format!("WITH RECURSIVE {NOTIFIED_ROOMS} SELECT room_id FROM r WHERE room_id IS NOT NULL"))
                .map_err(backend)?;
            let rooms = collect::<String>(rooms.query_map([&user_id], |r| r.get(0)).map_err(backend)?)?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, n.actions, n.highlight, n.stream_pos <= {READ_POSITION}
                 FROM (SELECT ?2 AS room_id) r
                 JOIN notifications n ON n.user_id = ?1 AND n.room_id = r.room_id
                 JOIN events e ON e.stream_pos = n.stream_pos {REDACTION_JOIN}
                 WHERE n.stream_pos > ?3 AND n.stream_pos <= ?4
                 ORDER BY n.stream_pos LIMIT ?5"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let mut out = Vec::new();
            for room in &rooms {
                let found = stmt
                    .query_map(params![user_id, room, i(after), i(up_to), i(limit as u64)], |r| {
                        rows::queued_notification(&SqliteRow(r))
                    })
                    .map_err(backend)?;
                out.extend(collect(found)?);
            }
            out.sort_unstable_by_key(|q| q.notification.event.stream_pos);
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn badge_counts(&self, user_id: &str) -> StoreResult<BadgeCounts> {
        let user_id = user_id.to_owned();
        self.read_heavy(move |conn| {
            let invites: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM room_state
                     WHERE state_key = ?1 AND event_type = 'm.room.member' AND to_pos IS NULL AND membership = 'invite'",
                )
                .and_then(|mut s| s.query_row([&user_id], |r| r.get(0)))
                .map_err(backend)?;
            let sql = format!(
                "WITH RECURSIVE {NOTIFIED_ROOMS}
                 SELECT (SELECT COUNT(*) FROM notifications n
                         WHERE n.user_id = ?1 AND n.room_id = r.room_id AND n.stream_pos > {READ_POSITION}) AS unread
                 FROM r
                 WHERE r.room_id IS NOT NULL
                   AND EXISTS (SELECT 1 FROM room_state s INDEXED BY room_state_current
                               WHERE s.room_id = r.room_id AND s.event_type = 'm.room.member' AND s.state_key = ?1
                                 AND s.to_pos IS NULL AND s.membership = 'join')"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let counts = collect::<i64>(stmt.query_map([&user_id], |r| r.get(0)).map_err(backend)?)?;
            Ok(BadgeCounts { invites: u(invites), unread_per_room: counts.into_iter().map(u).filter(|n| *n > 0).collect() })
        })
        .await
    }
}
