//! `HierarchyStore` on PostgreSQL: paused space-hierarchy walks.

use async_trait::async_trait;
use chancery_store::{HierarchyStore, HierarchyWalk, StoreError, StoreResult, read_walk_state, walk_state_json};
use chancery_store_sql::i;
use chancery_store_sql::rows::{self, HIERARCHY_WALK_COLUMNS};
use tokio_postgres::error::SqlState;

use crate::query::{PgRow, execute, query_opt};
use crate::{PostgresStore, backend};

/// Class of the per-user advisory lock that keeps a user's walks within
/// their bound when two nodes save one at once.
const WALKS_LOCK: i32 = 0x6869_6572; // "hier"

#[async_trait]
impl HierarchyStore for PostgresStore {
    async fn save_hierarchy_walk(&self, walk: &HierarchyWalk, expire_before_ts: u64, max_per_user: usize) -> StoreResult<()> {
        let state = walk_state_json(walk)?;
        let keep = i(u64::try_from(max_per_user.saturating_sub(1)).unwrap_or(u64::MAX));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        execute(&tx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&WALKS_LOCK, &walk.user_id]).await.map_err(backend)?;
        execute(&tx, "DELETE FROM hierarchy_walks WHERE created_ts < $1", &[&i(expire_before_ts)]).await.map_err(backend)?;
        execute(
            &tx,
            "DELETE FROM hierarchy_walks WHERE token IN
               (SELECT token FROM hierarchy_walks WHERE user_id = $1
                ORDER BY created_ts DESC, token DESC OFFSET $2)",
            &[&walk.user_id, &keep],
        )
        .await
        .map_err(backend)?;
        execute(
            &tx,
            "INSERT INTO hierarchy_walks (token, user_id, room_id, suggested_only, max_depth, walk, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &walk.token,
                &walk.user_id,
                &walk.room_id,
                &walk.suggested_only,
                &i64::from(walk.max_depth),
                &state,
                &i(walk.created_ts),
            ],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                StoreError::Contract("a hierarchy walk token was saved twice")
            } else {
                backend(e)
            }
        })?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn hierarchy_walk(&self, token: &str, expire_before_ts: u64) -> StoreResult<Option<HierarchyWalk>> {
        let client = self.client().await?;
        let sql = format!("{HIERARCHY_WALK_COLUMNS} WHERE token = $1 AND created_ts >= $2");
        let Some(row) = query_opt(&client, &sql, &[&token, &i(expire_before_ts)]).await? else {
            return Ok(None);
        };
        let (mut walk, state) = rows::hierarchy_walk(&PgRow(&row))?;
        read_walk_state(&mut walk, &state)?;
        Ok(Some(walk))
    }
}
