//! `JobLeaseStore` on SQLite (one node, but the same contract).

use async_trait::async_trait;
use chancery_store::{JobLeaseStore, StoreResult};
use chancery_store_sql::i;
use rusqlite::params;

use crate::{SqliteStore, backend};

#[async_trait]
impl JobLeaseStore for SqliteStore {
    async fn try_job_lease(&self, job: &str, node: &str, now_ts: u64, until_ts: u64) -> StoreResult<bool> {
        let (job, node) = (job.to_owned(), node.to_owned());
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "INSERT INTO job_leases (job, node, until_ts) VALUES (?1, ?2, ?4)
                     ON CONFLICT (job) DO UPDATE SET node = excluded.node, until_ts = excluded.until_ts
                     WHERE job_leases.node = excluded.node OR job_leases.until_ts <= ?3",
                    params![job, node, i(now_ts), i(until_ts)],
                )
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_job_lease(&self, job: &str, node: &str) -> StoreResult<()> {
        let (job, node) = (job.to_owned(), node.to_owned());
        self.write(move |tx| {
            tx.execute("DELETE FROM job_leases WHERE job = ?1 AND node = ?2", params![job, node]).map_err(backend)?;
            Ok(())
        })
        .await
    }
}
