//! `JobLeaseStore` on PostgreSQL: one statement each, so two nodes racing
//! for a free lease never both get it (the row's lock orders them).

use async_trait::async_trait;
use chancery_store::{JobLeaseStore, StoreResult};
use chancery_store_sql::i;

use crate::query::execute;
use crate::{PostgresStore, backend};

#[async_trait]
impl JobLeaseStore for PostgresStore {
    async fn try_job_lease(&self, job: &str, node: &str, now_ts: u64, until_ts: u64) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = execute(
            &client,
            "INSERT INTO job_leases (job, node, until_ts) VALUES ($1, $2, $4)
             ON CONFLICT (job) DO UPDATE SET node = excluded.node, until_ts = excluded.until_ts
             WHERE job_leases.node = excluded.node OR job_leases.until_ts <= $3",
            &[&job, &node, &i(now_ts), &i(until_ts)],
        )
        .await
        .map_err(backend)?;
        Ok(changed == 1)
    }

    async fn release_job_lease(&self, job: &str, node: &str) -> StoreResult<()> {
        let client = self.client().await?;
        execute(&client, "DELETE FROM job_leases WHERE job = $1 AND node = $2", &[&job, &node]).await.map_err(backend)?;
        Ok(())
    }
}
