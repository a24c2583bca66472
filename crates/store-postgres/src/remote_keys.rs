//! `RemoteKeyCacheStore` on PostgreSQL.

use async_trait::async_trait;
use chancery_store::{RemoteKeyCacheStore, RemoteUserKeys, StoreResult};
use chancery_store_sql::{i, u};

use crate::query::{execute, get, query};
use crate::{PostgresStore, backend};

#[async_trait]
impl RemoteKeyCacheStore for PostgresStore {
    async fn remote_device_list_positions(&self, user_ids: &[String]) -> StoreResult<Vec<(String, u64)>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT u.user_id, COALESCE(d.stream_pos, 0) FROM UNNEST($1::text[]) AS u(user_id)
             LEFT JOIN device_list_changes d ON d.user_id = u.user_id",
            &[&user_ids],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, u(get(r, 1)?)))).collect()
    }

    async fn cached_remote_keys(&self, user_ids: &[String], fresh_after_ts: u64) -> StoreResult<Vec<(String, String)>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT r.user_id, r.keys FROM remote_device_keys r LEFT JOIN device_list_changes d ON d.user_id = r.user_id
             WHERE r.user_id = ANY($1) AND r.fetched_ts > $2 AND COALESCE(d.stream_pos, 0) = r.list_pos",
            &[&user_ids, &i(fresh_after_ts)],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }

    async fn cache_remote_keys(&self, entries: &[RemoteUserKeys], now_ts: u64, max_entries: usize) -> StoreResult<()> {
        let keep = i64::try_from(max_entries).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        for entry in entries {
            execute(
                &tx,
                "INSERT INTO remote_device_keys (user_id, keys, list_pos, fetched_ts) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO UPDATE
                 SET keys = excluded.keys, list_pos = excluded.list_pos, fetched_ts = excluded.fetched_ts",
                &[&entry.user_id, &entry.keys_json, &i(entry.list_pos), &i(now_ts)],
            )
            .await
            .map_err(backend)?;
        }
        execute(
            &tx,
            "DELETE FROM remote_device_keys WHERE user_id IN
               (SELECT user_id FROM remote_device_keys ORDER BY fetched_ts DESC, user_id OFFSET $1)",
            &[&keep],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }
}
