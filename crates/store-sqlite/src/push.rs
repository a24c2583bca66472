//! `PushStore` on SQLite.

use async_trait::async_trait;
use chancery_store::*;
use rusqlite::{OptionalExtension, Transaction, params};

use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::rooms::collect;
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// Stores the notifications of an event being appended (same transaction),
/// and queues them for the notified users' pushers.
pub(crate) fn insert_notifications(tx: &Transaction<'_>, event: &NewEvent, pos: i64) -> StoreResult<()> {
    for n in &event.notifications {
        tx.prepare_cached(
            "INSERT INTO notifications (user_id, room_id, stream_pos, actions, highlight) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![n.user_id, event.room_id, pos, n.actions_json, n.highlight]))
        .map_err(backend)?;
    }
    crate::pushers::raise_queued_positions(tx, &event.notifications, pos)
}

#[async_trait]
impl PushStore for SqliteStore {
    async fn push_rules(&self, user_id: &str) -> StoreResult<Option<String>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT json_extract(content, '$.global') FROM account_data
                 WHERE user_id = ?1 AND room_id = '' AND event_type = 'm.push_rules'",
            )
            .and_then(|mut s| s.query_row([user_id], |r| r.get(0)).optional())
            .map(Option::flatten)
            .map_err(backend)
        })
        .await
    }

    async fn push_rules_of(&self, user_ids: &[String]) -> StoreResult<Vec<(String, String)>> {
        let ids = serde_json::to_string(user_ids).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.read_heavy(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id, json_extract(content, '$.global') FROM account_data
                     WHERE room_id = '' AND event_type = 'm.push_rules' AND user_id IN (SELECT value FROM json_each(?1))",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([ids], |r| rows::user_push_rules(&SqliteRow(r))).map_err(backend)?;
            collect(rows.filter_map(Result::transpose))
        })
        .await
    }

    async fn joined_members_with_push_rules(&self, room_id: &str) -> StoreResult<Vec<(String, Option<String>)>> {
        let room_id = room_id.to_owned();
        self.read_heavy(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT s.state_key, json_extract(a.content, '$.global') FROM room_state s INDEXED BY room_state_current
                     LEFT JOIN account_data a ON a.user_id = s.state_key AND a.room_id = '' AND a.event_type = 'm.push_rules'
                     WHERE s.room_id = ?1 AND s.event_type = 'm.room.member' AND s.to_pos IS NULL AND s.membership = 'join'
                     ORDER BY s.state_key",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([room_id], |r| rows::member_push_rules(&SqliteRow(r))).map_err(backend)?;
            collect(rows)
        })
        .await
    }

    async fn push_rules_in_room(&self, room_id: &str) -> StoreResult<Vec<(String, String)>> {
        let room_id = room_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT a.user_id, json_extract(a.content, '$.global') FROM account_data a INDEXED BY account_data_push_rules
                     WHERE a.event_type = 'm.push_rules' AND a.room_id = ''
                       AND EXISTS (SELECT 1 FROM room_state s INDEXED BY room_state_current
                                   WHERE s.room_id = ?1 AND s.event_type = 'm.room.member' AND s.state_key = a.user_id
                                     AND s.to_pos IS NULL AND s.membership = 'join')",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([room_id], |r| rows::user_push_rules(&SqliteRow(r))).map_err(backend)?;
            collect(rows.filter_map(Result::transpose))
        })
        .await
    }

    async fn set_push_rules(&self, user_id: &str, ruleset_json: &str, limits: AccountDataLimits) -> StoreResult<u64> {
        let content = format!("{{\"global\":{ruleset_json}}}");
        self.set_account_data(user_id, None, "m.push_rules", &content, limits).await
    }

    async fn notifications(
        &self,
        user_id: &str,
        before: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> StoreResult<Vec<StoredNotification>> {
        let user_id = user_id.to_owned();
        self.read_heavy(move |conn| {
            let before = before.map_or(i64::MAX, i);
            let limit = i(limit as u64);
            // The user's newest `limit` positions across their rooms: the
            // newest of each room's range, merged.
            let mut rooms = conn
                .prepare_cached(
                    "WITH RECURSIVE r(room_id) AS (
                         SELECT MIN(room_id) FROM notifications WHERE user_id = ?1
                         UNION ALL
                         SELECT (SELECT MIN(room_id) FROM notifications WHERE user_id = ?1 AND room_id > r.room_id)
                         FROM r WHERE r.room_id IS NOT NULL
                     )
                     SELECT room_id FROM r WHERE room_id IS NOT NULL",
                )
                .map_err(backend)?;
            let rooms = collect::<String>(rooms.query_map([&user_id], |r| r.get(0)).map_err(backend)?)?;
            let mut newest = conn
                .prepare_cached(
                    "SELECT stream_pos FROM notifications
                     WHERE user_id = ?1 AND room_id = ?2 AND stream_pos < ?3 AND (?4 = 0 OR highlight = 1)
                     ORDER BY stream_pos DESC LIMIT ?5",
                )
                .map_err(backend)?;
            let mut positions = Vec::new();
            for room in &rooms {
                positions.extend(collect::<i64>(
                    newest.query_map(params![user_id, room, before, only_highlight, limit], |r| r.get(0)).map_err(backend)?,
                )?);
            }
            positions.sort_unstable_by(|a, b| b.cmp(a));
            positions.truncate(limit as usize);
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, n.actions, n.highlight
                 FROM notifications n JOIN events e ON e.stream_pos = n.stream_pos {REDACTION_JOIN}
                 WHERE n.user_id = ?1 AND n.room_id = e.room_id AND n.stream_pos = ?2"
            );
            let mut row = conn.prepare_cached(&sql).map_err(backend)?;
            let mut out = Vec::with_capacity(positions.len());
            for pos in positions {
                let found = row
                    .query_row(params![user_id, pos], |r| rows::stored_notification(&SqliteRow(r)))
                    .optional()
                    .map_err(backend)?;
                out.extend(found);
            }
            Ok(out)
        })
        .await
    }

    async fn read_up_to(&self, room_id: &str, user_id: &str) -> StoreResult<u64> {
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        self.read(move |conn| {
            let own = latest_event_of_sender(conn, &room_id, &user_id)?.unwrap_or(0);
            let receipt: Option<i64> = conn
                .prepare_cached(
                    "SELECT MAX(e.stream_pos) FROM receipts r JOIN events e ON e.event_id = r.event_id
                     WHERE r.room_id = ?1 AND r.user_id = ?2 AND r.receipt_type IN ('m.read', 'm.read.private')
                       AND r.thread_id IN ('', 'main')",
                )
                .and_then(|mut s| s.query_row(params![room_id, user_id], |r| r.get(0)))
                .map_err(backend)?;
            Ok(own.max(receipt.map_or(0, u)))
        })
        .await
    }

    async fn unread_notifications_by_thread(
        &self,
        user_id: &str,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<ThreadedNotification>> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.read_heavy(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT rel.relates_to, n.stream_pos, n.highlight FROM notifications n
                     JOIN events e ON e.stream_pos = n.stream_pos
                     LEFT JOIN relations rel ON rel.event_id = e.event_id AND rel.rel_type = 'm.thread'
                     WHERE n.user_id = ?1 AND n.room_id = ?2 AND n.stream_pos > ?3
                     ORDER BY n.stream_pos LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![user_id, room_id, i(after), i(limit as u64)], |r| rows::threaded_notification(&SqliteRow(r)))
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn read_positions(&self, user_id: &str, room_id: &str) -> StoreResult<(Vec<(String, u64)>, u64)> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.read(move |conn| {
            let own = latest_event_of_sender(conn, &room_id, &user_id)?.unwrap_or(0);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT r.thread_id, MAX(e.stream_pos) FROM receipts r JOIN events e ON e.event_id = r.event_id
                     WHERE r.room_id = ?1 AND r.user_id = ?2 AND r.receipt_type IN ('m.read', 'm.read.private')
                     GROUP BY r.thread_id",
                )
                .map_err(backend)?;
            let rows =
                stmt.query_map(params![room_id, user_id], |r| Ok((r.get::<_, String>(0)?, u(r.get(1)?)))).map_err(backend)?;
            Ok((rows.collect::<Result<Vec<_>, _>>().map_err(backend)?, own))
        })
        .await
    }

    async fn notification_counts(&self, user_id: &str, room_id: &str, after: u64) -> StoreResult<(u64, u64)> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(highlight), 0) FROM notifications
                 WHERE user_id = ?1 AND room_id = ?2 AND stream_pos > ?3",
            )
            .and_then(|mut s| s.query_row(params![user_id, room_id, i(after)], |r| Ok((u(r.get(0)?), u(r.get(1)?)))))
            .map_err(backend)
        })
        .await
    }

    async fn prune_notifications(
        &self,
        before_ts: u64,
        after_user: Option<&str>,
        max_users: usize,
    ) -> StoreResult<(u64, Option<String>)> {
        let after_user = after_user.unwrap_or("").to_owned();
        let users = self
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT DISTINCT user_id FROM notifications WHERE user_id > ?1 ORDER BY user_id LIMIT ?2")
                    .map_err(backend)?;
                collect::<String>(stmt.query_map(params![after_user, i(max_users as u64)], |r| r.get(0)).map_err(backend)?)
            })
            .await?;
        let mut deleted = 0;
        for user in &users {
            let user = user.clone();
            deleted += self
                .write(move |tx| {
                    // The user's rooms (skipping through the key), each
                    // with the position of its newest event stamped before
                    // the cut.
                    let rooms = collect::<(String, Option<i64>)>(
                        tx.prepare_cached(
                            "WITH RECURSIVE r(room_id) AS (
                                 SELECT MIN(room_id) FROM notifications WHERE user_id = ?1
                                 UNION ALL
                                 SELECT (SELECT MIN(room_id) FROM notifications WHERE user_id = ?1 AND room_id > r.room_id)
                                 FROM r WHERE r.room_id IS NOT NULL
                             )
                             SELECT room_id, (SELECT e.stream_pos FROM events e
                                              WHERE e.room_id = r.room_id AND e.origin_server_ts < ?2
                                              ORDER BY e.origin_server_ts DESC LIMIT 1)
                             FROM r WHERE room_id IS NOT NULL",
                        )
                        .map_err(backend)?
                        .query_map(params![user, i(before_ts)], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(backend)?,
                    )?;
                    let mut delete = tx
                        .prepare_cached("DELETE FROM notifications WHERE user_id = ?1 AND room_id = ?2 AND stream_pos <= ?3")
                        .map_err(backend)?;
                    let mut deleted = 0;
                    for (room_id, cut) in rooms {
                        if let Some(cut) = cut {
                            deleted += delete.execute(params![user, room_id, cut]).map_err(backend)? as u64;
                        }
                    }
                    Ok(deleted)
                })
                .await?;
        }
        let last = if users.len() < max_users { None } else { users.last().cloned() };
        Ok((deleted, last))
    }
}

pub(crate) fn latest_event_of_sender(conn: &rusqlite::Connection, room_id: &str, sender: &str) -> StoreResult<Option<u64>> {
    conn.prepare_cached("SELECT MAX(stream_pos) FROM events WHERE room_id = ?1 AND sender = ?2")
        .and_then(|mut s| s.query_row(params![room_id, sender], |r| r.get::<_, Option<i64>>(0)))
        .map(|p| p.map(u))
        .map_err(backend)
}
