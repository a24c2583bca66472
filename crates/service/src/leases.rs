//! Running a job on one node of a cluster at a time ([`JobLeaseStore`]):
//! a node runs the job only while it holds the job's lease, renews it
//! well before it ends, and stops the job as soon as it cannot be sure it
//! still holds it. A node stopping gracefully releases the lease, so
//! another takes over at its next try rather than after the lease ends.

use std::sync::Arc;
use std::time::Duration;

use chancery_store::JobLeaseStore;
use tokio::sync::watch;

use crate::clock::Clock;

/// How long a lease lasts, how often its holder renews it, and how often
/// a node without it tries to take it.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    pub lease_ms: u64,
    pub renew_ms: u64,
    pub retry_ms: u64,
}

/// For the federation sender: a node that dies hands sending on within
/// 30 s; a stopped one at once.
pub const SENDER_LEASE: LeaseTimes = LeaseTimes { lease_ms: 30_000, renew_ms: 5_000, retry_ms: 2_000 };

/// What a node does after trying to take or renew the lease: `held_until`
/// is when the lease it last got ends (0: never got it), `answer` the
/// store's answer (`Err` when it could not be asked).
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Holds it until then: run (or keep running) the job.
    Run { until: u64 },
    /// Another node holds it, or this one cannot know past its lease's
    /// end: stop the job if it runs.
    Stop,
    /// The store did not answer, but the lease held runs on: keep the job
    /// running until it ends.
    KeepUntil(u64),
}

pub fn lease_step(now_ms: u64, held_until: u64, asked_until: u64, answer: Result<bool, ()>) -> LeaseStep {
    match answer {
        Ok(true) => LeaseStep::Run { until: asked_until },
        Ok(false) => LeaseStep::Stop,
        Err(()) if held_until > now_ms => LeaseStep::KeepUntil(held_until),
        Err(()) => LeaseStep::Stop,
    }
}

/// Runs `job` (given a shutdown signal of its own, returning once it
/// turns true) on this node whenever it holds `name`'s lease, until
/// `shutdown` turns true.
pub async fn run_leased<F, Fut>(
    store: Arc<dyn JobLeaseStore>,
    clock: Arc<dyn Clock>,
    name: &str,
    node: &str,
    times: LeaseTimes,
    mut shutdown: watch::Receiver<bool>,
    job: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut held_until = 0;
    let mut running: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> = None;
    while !*shutdown.borrow() {
        let now = clock.now_ms();
        let asked_until = now + times.lease_ms;
        let answer = store.try_job_lease(name, node, now, asked_until).await.map_err(|e| {
            tracing::warn!(job = name, error = %e, "renewing a job's lease failed");
        });
        let step = lease_step(now, held_until, asked_until, answer);
        match step {
            LeaseStep::Run { until } => {
                if running.is_none() {
                    tracing::info!(job = name, node, "this node runs the job");
                    let (stop, stop_rx) = watch::channel(false);
                    running = Some((stop, tokio::spawn(job(stop_rx))));
                }
                held_until = until;
            }
            LeaseStep::KeepUntil(until) => held_until = until,
            LeaseStep::Stop => {
                held_until = 0;
                if let Some((stop, handle)) = running.take() {
                    tracing::info!(job = name, node, "another node runs the job now");
                    let _ = stop.send(true);
                    let _ = handle.await;
                }
            }
        }
        let wait = if running.is_some() { times.renew_ms } else { times.retry_ms };
        tokio::select! {
            _ = shutdown.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    if let Some((stop, handle)) = running.take() {
        let _ = stop.send(true);
        let _ = handle.await;
        if let Err(e) = store.release_job_lease(name, node).await {
            tracing::warn!(job = name, error = %e, "releasing a job's lease failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        assert_eq!(lease_step(1_000, 0, 31_000, Ok(true)), LeaseStep::Run { until: 31_000 });
        assert_eq!(lease_step(1_000, 20_000, 31_000, Ok(false)), LeaseStep::Stop);
        // The store is down: run on while the lease held lasts, not after.
        assert_eq!(lease_step(1_000, 20_000, 31_000, Err(())), LeaseStep::KeepUntil(20_000));
        assert_eq!(lease_step(20_000, 20_000, 50_000, Err(())), LeaseStep::Stop);
        assert_eq!(lease_step(1_000, 0, 31_000, Err(())), LeaseStep::Stop);
    }
}
