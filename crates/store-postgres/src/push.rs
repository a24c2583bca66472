//! `PushStore` on PostgreSQL.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chancery_store::*;
use serde_json::value::RawValue;
use tokio_postgres::Row;

use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::PostgresStore;
use crate::query::{PgRow, get, query, query_opt};

/// The rule set of an `m.push_rules` content, as the JSON text the service
/// parses; `None` (the defaults) if the content has none. Taken out of the
/// stored text here, never through `jsonb`: PostgreSQL writes numbers back
/// in its own form (`5e-324` as 324 decimals, integers past i64 as
/// digits), which is not always what was stored, and which a rule set
/// reader may refuse. A stored `\u0000` (see `json.rs`) is fine here too.
fn global_ruleset(content: &str) -> Option<String> {
    let mut content = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(content).ok()?;
    content.remove("global").map(|ruleset| String::from(Box::<str>::from(ruleset)))
}

/// The rule set in the `m.push_rules` content at `column`.
fn ruleset_of(row: &Row, column: usize) -> StoreResult<Option<String>> {
    Ok(get::<Option<String>>(row, column)?.as_deref().and_then(global_ruleset))
}

/// Columns (user_id, `m.push_rules` content): the user and their rule set.
fn member_push_rules(row: &Row) -> StoreResult<(String, Option<String>)> {
    Ok((get(row, 0)?, ruleset_of(row, 1)?))
}

/// As [`member_push_rules`], `None` for a user without rules of their own.
fn user_push_rules(row: &Row) -> StoreResult<Option<(String, String)>> {
    let (user_id, rules) = member_push_rules(row)?;
    Ok(rules.map(|rules| (user_id, rules)))
}

/// `rooms`: the rooms user `$1` has notifications in, found by skipping
/// through the (user_id, room_id) key, with a NULL row last.
pub(crate) const NOTIFIED_ROOMS: &str = "rooms AS (
    (SELECT room_id FROM notifications WHERE user_id = $1 ORDER BY room_id LIMIT 1)
    UNION ALL
    SELECT (SELECT m.room_id FROM notifications m WHERE m.user_id = $1 AND m.room_id > r.room_id
            ORDER BY m.room_id LIMIT 1)
    FROM rooms r WHERE r.room_id IS NOT NULL
)";

#[async_trait]
impl PushStore for PostgresStore {
    async fn push_rules(&self, user_id: &str) -> StoreResult<Option<String>> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = '' AND event_type = 'm.push_rules'",
            &[&user_id],
        )
        .await?;
        Ok(row.map(|r| ruleset_of(&r, 0)).transpose()?.flatten())
    }

    async fn push_rules_of(&self, user_ids: &[String]) -> StoreResult<Vec<(String, String)>> {
        let (_heavy, client) = self.heavy_client().await?;
        let rows = query(
            &client,
            "SELECT user_id, content FROM account_data
                 WHERE room_id = '' AND event_type = 'm.push_rules' AND user_id = ANY($1)",
            &[&user_ids],
        )
        .await?;
        rows.iter().map(user_push_rules).filter_map(Result::transpose).collect()
    }

    async fn joined_members_with_push_rules(&self, room_id: &str) -> StoreResult<Vec<(String, Option<String>)>> {
        let (_heavy, client) = self.heavy_client().await?;
        let rows = query(
            &client,
            "SELECT s.state_key, a.content FROM room_state s
                 LEFT JOIN account_data a ON a.user_id = s.state_key AND a.room_id = '' AND a.event_type = 'm.push_rules'
                 WHERE s.room_id = $1 AND s.event_type = 'm.room.member' AND s.to_pos IS NULL AND s.membership = 'join'
                 ORDER BY s.state_key",
            &[&room_id],
        )
        .await?;
        rows.iter().map(member_push_rules).collect()
    }

    async fn push_rules_in_room(&self, room_id: &str) -> StoreResult<Vec<(String, String)>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT a.user_id, a.content FROM account_data a
                 WHERE a.event_type = 'm.push_rules' AND a.room_id = ''
                   AND EXISTS (SELECT 1 FROM room_state s
                               WHERE s.room_id = $1 AND s.event_type = 'm.room.member' AND s.state_key = a.user_id
                                 AND s.to_pos IS NULL AND s.membership = 'join')",
            &[&room_id],
        )
        .await?;
        rows.iter().map(user_push_rules).filter_map(Result::transpose).collect()
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
        let (_heavy, client) = self.heavy_client().await?;
        // The newest of each of the user's rooms (found by skipping through
        // the key), merged.
        let sql = format!(
            "WITH RECURSIVE {NOTIFIED_ROOMS}
             SELECT {EVENT_COLUMNS}, n.actions, n.highlight
             FROM rooms
             CROSS JOIN LATERAL (
                 SELECT * FROM notifications n
                 WHERE n.user_id = $1 AND n.room_id = rooms.room_id AND n.stream_pos < $2 AND (NOT $3 OR n.highlight)
                 ORDER BY n.stream_pos DESC LIMIT $4
             ) n
             JOIN events e ON e.stream_pos = n.stream_pos {REDACTION_JOIN}
             ORDER BY n.stream_pos DESC LIMIT $4"
        );
        let rows = query(&client, &sql, &[&user_id, &before.map_or(i64::MAX, i), &only_highlight, &i(limit as u64)]).await?;
        rows.iter().map(|r| rows::stored_notification(&PgRow(r))).collect()
    }

    async fn read_up_to(&self, room_id: &str, user_id: &str) -> StoreResult<u64> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT GREATEST(
                 (SELECT MAX(stream_pos) FROM events WHERE room_id = $1 AND sender = $2),
                 (SELECT MAX(e.stream_pos) FROM receipts r JOIN events e ON e.event_id = r.event_id
                  WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private')
                    AND r.thread_id IN ('', 'main')))",
            &[&room_id, &user_id],
        )
        .await?;
        Ok(row.map(|r| get::<Option<i64>>(&r, 0)).transpose()?.flatten().map_or(0, u))
    }

    async fn unread_notifications_by_thread(
        &self,
        user_id: &str,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<ThreadedNotification>> {
        let (_heavy, client) = self.heavy_client().await?;
        let rows = query(
            &client,
            "SELECT rel.relates_to, n.stream_pos, n.highlight FROM notifications n
             JOIN events e ON e.stream_pos = n.stream_pos
             LEFT JOIN relations rel ON rel.event_id = e.event_id AND rel.rel_type = 'm.thread'
             WHERE n.user_id = $1 AND n.room_id = $2 AND n.stream_pos > $3
             ORDER BY n.stream_pos LIMIT $4",
            &[&user_id, &room_id, &i(after), &i(limit as u64)],
        )
        .await?;
        rows.iter().map(|r| rows::threaded_notification(&PgRow(r))).collect()
    }

    async fn read_positions(&self, user_id: &str, room_id: &str) -> StoreResult<(Vec<(String, u64)>, u64)> {
        let client = self.client().await?;
        let own =
            query_opt(&client, "SELECT MAX(stream_pos) FROM events WHERE room_id = $1 AND sender = $2", &[&room_id, &user_id])
                .await?
                .map(|r| get::<Option<i64>>(&r, 0))
                .transpose()?
                .flatten()
                .map_or(0, u);
        let rows = query(
            &client,
            "SELECT r.thread_id, MAX(e.stream_pos) FROM receipts r JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private')
             GROUP BY r.thread_id",
            &[&room_id, &user_id],
        )
        .await?;
        let positions = rows.iter().map(|r| Ok((get::<String>(r, 0)?, u(get::<i64>(r, 1)?)))).collect::<StoreResult<Vec<_>>>()?;
        Ok((positions, own))
    }

    async fn notification_counts(&self, user_id: &str, room_id: &str, after: u64) -> StoreResult<(u64, u64)> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE highlight) FROM notifications
             WHERE user_id = $1 AND room_id = $2 AND stream_pos > $3",
            &[&user_id, &room_id, &i(after)],
        )
        .await?
        .ok_or_else(|| StoreError::Backend("count returned no row".into()))?;
        Ok((u(get(&row, 0)?), u(get(&row, 1)?)))
    }

    async fn prune_notifications(
        &self,
        before_ts: u64,
        after_user: Option<&str>,
        max_users: usize,
    ) -> StoreResult<(u64, Option<String>)> {
        let client = self.client().await?;
        let after_user = after_user.unwrap_or("");
        let rows = query(
            &client,
            "SELECT DISTINCT user_id FROM notifications WHERE user_id > $1 ORDER BY user_id LIMIT $2",
            &[&after_user, &i(max_users as u64)],
        )
        .await?;
        let users = rows.iter().map(|r| get::<String>(r, 0)).collect::<StoreResult<Vec<_>>>()?;
        // Per user, one statement: their rooms (skipping through the key),
        // each with the position of its newest event stamped before the
        // cut, and the rows up to it.
        let delete = client
            .prepare_cached(&format!(
                "WITH RECURSIVE {NOTIFIED_ROOMS}, cut AS (
                     SELECT r.room_id, (SELECT e.stream_pos FROM events e
                                        WHERE e.room_id = r.room_id AND e.origin_server_ts < $2
                                        ORDER BY e.origin_server_ts DESC LIMIT 1) AS pos
                     FROM rooms r WHERE r.room_id IS NOT NULL
                 )
                 DELETE FROM notifications n USING cut
                 WHERE n.user_id = $1 AND n.room_id = cut.room_id AND n.stream_pos <= cut.pos"
            ))
            .await
            .map_err(crate::backend)?;
        let mut deleted = 0;
        for user in &users {
            deleted += client.execute(&delete, &[user, &i(before_ts)]).await.map_err(crate::backend)?;
        }
        let last = if users.len() < max_users { None } else { users.last().cloned() };
        Ok((deleted, last))
    }
}
