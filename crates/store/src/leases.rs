//! Leases on jobs that one node of a cluster runs at a time (the outbound
//! federation sender): a row per job names the node holding it and until
//! when. A node renews its lease before it ends; another node takes it
//! only once it has ended (or was released), so a node that dies hands
//! the job on after at most one lease.

use async_trait::async_trait;

use crate::StoreResult;

#[async_trait]
pub trait JobLeaseStore: Send + Sync {
    /// Takes or renews `job` for `node` until `until_ts` if no other node
    /// holds it at `now_ts`; whether `node` holds it now.
    async fn try_job_lease(&self, job: &str, node: &str, now_ts: u64, until_ts: u64) -> StoreResult<bool>;

    /// Gives `job` up if `node` holds it (a node stopping gracefully).
    async fn release_job_lease(&self, job: &str, node: &str) -> StoreResult<()>;
}
