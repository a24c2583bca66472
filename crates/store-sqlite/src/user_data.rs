use async_trait::async_trait;
use chancery_store::{StoreError, StoreResult, UserDataStore};
use chancery_store_sql::params::reaches_limit;
use rusqlite::{OptionalExtension, params};

use crate::{SqliteStore, backend};

#[async_trait]
impl UserDataStore for SqliteStore {
    async fn create_filter(&self, user_id: &str, filter_json: &str, max_filters: usize) -> StoreResult<String> {
        let (user_id, filter_json) = (user_id.to_owned(), filter_json.to_owned());
        self.write(move |tx| {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT filter_id FROM filters WHERE user_id = ?1 AND filter_json = ?2",
                    params![user_id, filter_json],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if let Some(id) = existing {
                return Ok(id.to_string());
            }
            let (count, next): (i64, i64) = tx
                .query_row("SELECT COUNT(*), COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?1", [&user_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(backend)?;
            if reaches_limit(count, max_filters) {
                return Err(StoreError::TooManyFilters);
            }
            tx.execute(
                "INSERT INTO filters (user_id, filter_id, filter_json) VALUES (?1, ?2, ?3)",
                params![user_id, next, filter_json],
            )
            .map_err(backend)?;
            Ok(next.to_string())
        })
        .await
    }

    async fn filter(&self, user_id: &str, filter_id: &str) -> StoreResult<Option<String>> {
        let Ok(id) = filter_id.parse::<i64>() else { return Ok(None) };
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.query_row("SELECT filter_json FROM filters WHERE user_id = ?1 AND filter_id = ?2", params![user_id, id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }
}
