//! Periodic upkeep of the store. Every node runs it; each pass is
//! idempotent, so nodes sharing a database may overlap harmlessly.

use std::sync::Arc;
use std::time::Duration;

use chancery_service::{Media, OpenId, Push, SlidingSync};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// The first pass waits for startup to settle.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(5 * 60);
const PASS_EVERY: Duration = Duration::from_secs(60 * 60);

/// Runs the passes until shutdown; a pass in progress is abandoned then
/// (each store call it makes is a transaction of its own).
pub(crate) async fn run(
    push: Arc<Push>,
    sliding_sync: Arc<SlidingSync>,
    media: Arc<Media>,
    openid: Arc<OpenId>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval_at(Instant::now() + FIRST_PASS_AFTER, PASS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let passes = async {
        loop {
            tick.tick().await;
            match push.prune_notifications().await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "deleted notifications older than the retention"),
                Err(e) => tracing::warn!(error = %e, "deleting old notifications failed; the next pass retries"),
            }
            match sliding_sync.expire_idle_connections().await {
                Ok(0) => {}
                Ok(connections) => tracing::info!(connections, "forgot idle sliding sync connections"),
                Err(e) => tracing::warn!(error = %e, "forgetting idle sliding sync connections failed; the next pass retries"),
            }
            // Expired pending media ids, abandoned uploads, files a crash or
            // a deletion left without a row.
            match media.collect_garbage().await {
                Ok(report) if report == Default::default() => {}
                Ok(report) => tracing::info!(?report, "collected media garbage"),
                Err(e) => tracing::warn!(error = %e, "collecting media garbage failed; the next pass retries"),
            }
            match openid.delete_expired().await {
                Ok(0) => {}
                Ok(tokens) => tracing::info!(tokens, "deleted expired OpenID tokens"),
                Err(e) => tracing::warn!(error = %e, "deleting expired OpenID tokens failed; the next pass retries"),
            }
        }
    };
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => Ok(()),
        () = passes => Ok(()),
    }
}
