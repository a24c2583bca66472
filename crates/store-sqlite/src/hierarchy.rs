//! `HierarchyStore` on SQLite: paused space-hierarchy walks.

use async_trait::async_trait;
use chancery_store::{HierarchyStore, HierarchyWalk, StoreError, StoreResult, read_walk_state, walk_state_json};
use chancery_store_sql::i;
use chancery_store_sql::rows::{self, HIERARCHY_WALK_COLUMNS};
use rusqlite::{OptionalExtension, params};

use crate::accounts::is_unique_violation;
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

#[async_trait]
impl HierarchyStore for SqliteStore {
    async fn save_hierarchy_walk(&self, walk: &HierarchyWalk, expire_before_ts: u64, max_per_user: usize) -> StoreResult<()> {
        let walk = walk.clone();
        let state = walk_state_json(&walk)?;
        self.write(move |tx| {
            tx.execute("DELETE FROM hierarchy_walks WHERE created_ts < ?1", [i(expire_before_ts)]).map_err(backend)?;
            // Make room for this one: keep the user's newest
            // `max_per_user - 1`.
            let keep = i(u64::try_from(max_per_user.saturating_sub(1)).unwrap_or(u64::MAX));
            tx.execute(
                "DELETE FROM hierarchy_walks WHERE token IN
                   (SELECT token FROM hierarchy_walks WHERE user_id = ?1
                    ORDER BY created_ts DESC, token DESC LIMIT -1 OFFSET ?2)",
                params![walk.user_id, keep],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO hierarchy_walks (token, user_id, room_id, suggested_only, max_depth, walk, created_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    walk.token,
                    walk.user_id,
                    walk.room_id,
                    walk.suggested_only,
                    i64::from(walk.max_depth),
                    state,
                    i(walk.created_ts)
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) { StoreError::Contract("a hierarchy walk token was saved twice") } else { backend(e) }
            })?;
            Ok(())
        })
        .await
    }

    async fn hierarchy_walk(&self, token: &str, expire_before_ts: u64) -> StoreResult<Option<HierarchyWalk>> {
        let token = token.to_owned();
        self.read(move |conn| {
            let found = conn
                .query_row(&format!("{HIERARCHY_WALK_COLUMNS} WHERE token = ?1"), [token], |r| {
                    rows::hierarchy_walk(&SqliteRow(r))
                })
                .optional()
                .map_err(backend)?;
            let Some((mut walk, state)) = found else { return Ok(None) };
            if walk.created_ts < expire_before_ts {
                return Ok(None);
            }
            read_walk_state(&mut walk, &state)?;
            Ok(Some(walk))
        })
        .await
    }
}
