use async_trait::async_trait;
use chancery_store::{StoreError, StoreResult, UserDataStore};
use chancery_store_sql::params::reaches_limit;

use crate::query::{get, query_opt};
use crate::{PostgresStore, backend};

#[async_trait]
impl UserDataStore for PostgresStore {
    async fn create_filter(&self, user_id: &str, filter_json: &str, max_filters: usize) -> StoreResult<String> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Two uploads of one user at once must not pick the same id.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('filters:' || $1))", &[&user_id]).await.map_err(backend)?;
        if let Some(existing) =
            query_opt(&tx, "SELECT filter_id FROM filters WHERE user_id = $1 AND filter_json = $2", &[&user_id, &filter_json])
                .await?
        {
            return Ok(get::<i64>(&existing, 0)?.to_string());
        }
        let row =
            query_opt(&tx, "SELECT COUNT(*), COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = $1", &[&user_id])
                .await?
                .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
        let (count, next): (i64, i64) = (get(&row, 0)?, get(&row, 1)?);
        if reaches_limit(count, max_filters) {
            return Err(StoreError::TooManyFilters);
        }
        tx.execute("INSERT INTO filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3)", &[&user_id, &next, &filter_json])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(next.to_string())
    }

    async fn filter(&self, user_id: &str, filter_id: &str) -> StoreResult<Option<String>> {
        let Ok(id) = filter_id.parse::<i64>() else { return Ok(None) };
        let client = self.client().await?;
        query_opt(&client, "SELECT filter_json FROM filters WHERE user_id = $1 AND filter_id = $2", &[&user_id, &id])
            .await?
            .map(|r| get(&r, 0))
            .transpose()
    }
}
