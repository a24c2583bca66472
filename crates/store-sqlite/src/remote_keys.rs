//! `RemoteKeyCacheStore` on SQLite.

use async_trait::async_trait;
use chancery_store::{RemoteKeyCacheStore, RemoteUserKeys, StoreResult};
use chancery_store_sql::{i, u};
use rusqlite::{OptionalExtension, params};

use crate::{SqliteStore, backend};

#[async_trait]
impl RemoteKeyCacheStore for SqliteStore {
    async fn remote_device_list_positions(&self, user_ids: &[String]) -> StoreResult<Vec<(String, u64)>> {
        let user_ids = user_ids.to_vec();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT stream_pos FROM device_list_changes WHERE user_id = ?1").map_err(backend)?;
            user_ids
                .into_iter()
                .map(|user| {
                    let pos: Option<i64> = stmt.query_row([&user], |r| r.get(0)).optional().map_err(backend)?;
                    Ok((user, pos.map_or(0, u)))
                })
                .collect()
        })
        .await
    }

    async fn cached_remote_keys(&self, user_ids: &[String], fresh_after_ts: u64) -> StoreResult<Vec<(String, String)>> {
        let user_ids = user_ids.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT r.keys FROM remote_device_keys r LEFT JOIN device_list_changes d ON d.user_id = r.user_id
                     WHERE r.user_id = ?1 AND r.fetched_ts > ?2 AND COALESCE(d.stream_pos, 0) = r.list_pos",
                )
                .map_err(backend)?;
            let mut found = Vec::new();
            for user in user_ids {
                let keys: Option<String> =
                    stmt.query_row(params![user, i(fresh_after_ts)], |r| r.get(0)).optional().map_err(backend)?;
                if let Some(keys) = keys {
                    found.push((user, keys));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn cache_remote_keys(&self, entries: &[RemoteUserKeys], now_ts: u64, max_entries: usize) -> StoreResult<()> {
        let entries = entries.to_vec();
        let keep = i64::try_from(max_entries).unwrap_or(i64::MAX);
        self.write(move |tx| {
            for entry in &entries {
                tx.prepare_cached(
                    "INSERT INTO remote_device_keys (user_id, keys, list_pos, fetched_ts) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (user_id) DO UPDATE
                     SET keys = excluded.keys, list_pos = excluded.list_pos, fetched_ts = excluded.fetched_ts",
                )
                .and_then(|mut s| s.execute(params![entry.user_id, entry.keys_json, i(entry.list_pos), i(now_ts)]))
                .map_err(backend)?;
            }
            tx.execute(
                "DELETE FROM remote_device_keys WHERE user_id IN
                   (SELECT user_id FROM remote_device_keys ORDER BY fetched_ts DESC, user_id LIMIT -1 OFFSET ?1)",
                [keep],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
