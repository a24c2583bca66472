//! `PushStore` on PostgreSQL.

use async_trait::async_trait;
use chancery_store::*;
use deadpool_postgres::Transaction;

use crate::accounts::{get, i, query, query_opt, u};
use crate::rooms::{EVENT_COLUMNS, REDACTION_JOIN, event_from_row};
use crate::{PostgresStore, backend};

/// Stores the notifications of an event about to be appended (same
/// transaction, before the stream lock: rows are keyed by event id).
pub(crate) async fn insert_notifications(tx: &Transaction<'_>, event: &NewEvent) -> StoreResult<()> {
    if event.notifications.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO notifications (user_id, event_id, room_id, actions, highlight)
             SELECT u, $2, $3, a, h FROM UNNEST($1::text[], $4::text[], $5::bool[]) AS t(u, a, h)
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(backend)?;
    let users: Vec<&str> = event.notifications.iter().map(|n| n.user_id.as_str()).collect();
    let actions: Vec<&str> = event.notifications.iter().map(|n| n.actions_json.as_str()).collect();
    let highlights: Vec<bool> = event.notifications.iter().map(|n| n.highlight).collect();
    tx.execute(&stmt, &[&users, &event.event_id, &event.room_id, &actions, &highlights]).await.map_err(backend)?;
    Ok(())
}

#[async_trait]
impl PushStore for PostgresStore {
    async fn push_rules(&self, user_id: &str) -> StoreResult<Option<String>> {
        let client = self.client().await?;
        query_opt(&client, "SELECT ruleset FROM push_rules WHERE user_id = $1", &[&user_id])
            .await?
            .map(|r| get(&r, 0))
            .transpose()
    }

    async fn push_rules_of(&self, user_ids: &[String]) -> StoreResult<Vec<(String, String)>> {
        let client = self.client().await?;
        let rows = query(&client, "SELECT user_id, ruleset FROM push_rules WHERE user_id = ANY($1)", &[&user_ids]).await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }

    async fn set_push_rules(&self, user_id: &str, ruleset_json: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO push_rules (user_id, ruleset) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET ruleset = excluded.ruleset",
                &[&user_id, &ruleset_json],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn notifications(
        &self,
        user_id: &str,
        before: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> StoreResult<Vec<StoredNotification>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, n.actions, n.highlight
             FROM notifications n JOIN events e ON e.event_id = n.event_id {REDACTION_JOIN}
             WHERE n.user_id = $1 AND e.stream_pos < $2 AND (NOT $3 OR n.highlight)
             ORDER BY e.stream_pos DESC LIMIT $4"
        );
        let rows = query(&client, &sql, &[&user_id, &before.map_or(i64::MAX, i), &only_highlight, &i(limit as u64)]).await?;
        rows.iter()
            .map(|r| Ok(StoredNotification { event: event_from_row(r)?, actions_json: get(r, 14)?, highlight: get(r, 15)? }))
            .collect()
    }

    async fn notification_counts(&self, user_id: &str, room_id: &str, after: u64) -> StoreResult<(u64, u64)> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE n.highlight) FROM notifications n JOIN events e ON e.event_id = n.event_id
             WHERE n.user_id = $1 AND n.room_id = $2 AND e.stream_pos > $3",
            &[&user_id, &room_id, &i(after)],
        )
        .await?
        .ok_or_else(|| StoreError::Backend("count returned no row".into()))?;
        Ok((u(get(&row, 0)?), u(get(&row, 1)?)))
    }
}
