//! Cross-node wake-ups: every transaction that moves a stream a client
//! syncs on sends `NOTIFY chancery_changes` (delivered at commit, dropped on
//! rollback); each node keeps one connection that `LISTEN`s and bumps a
//! counter, so long-polling syncs on every node wake at once instead of at
//! their timeout. No polling of the database.
//!
//! The same connection listens on `chancery_ephemeral`, whose payloads are
//! what nodes share of their in-memory state (typing, presence); they go to
//! a broadcast channel as they come.

use std::time::Duration;

use chancery_store::StoreResult;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::backend;

pub(crate) const CHANNEL: &str = "chancery_changes";
pub(crate) const EPHEMERAL_CHANNEL: &str = "chancery_ephemeral";
/// Ephemeral messages a slow reader may fall behind by before losing some.
pub(crate) const EPHEMERAL_BACKLOG: usize = 1024;

/// Queues the notification in `tx`; Postgres sends it when `tx` commits and
/// folds duplicates within one transaction.
pub(crate) async fn notify_in(tx: &deadpool_postgres::Transaction<'_>) -> StoreResult<()> {
    let stmt = tx.prepare_cached("SELECT pg_notify('chancery_changes', '')").await.map_err(backend)?;
    tx.execute(&stmt, &[]).await.map_err(backend)?;
    Ok(())
}

/// The first wait before connecting again after the connection dropped.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two tries: once the database is back, this
/// node hears the others again within about this long.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Listens until the sender's receivers are all gone, reconnecting with a
/// bounded back-off when the connection drops (the database restarting, a
/// failover). Each time it is listening again, every waiting sync is woken
/// once: what other nodes committed while it was deaf was never heard, and
/// a sync that started waiting then would otherwise sleep until its
/// timeout.
pub(crate) async fn listen(config: tokio_postgres::Config, changes: watch::Sender<u64>, ephemeral: broadcast::Sender<String>) {
    let mut backoff = FIRST_BACKOFF;
    let mut deaf_since: Option<std::time::Instant> = None;
    while !changes.is_closed() {
        let listening = || {
            if let Some(since) = deaf_since.take() {
                tracing::info!(after_ms = since.elapsed().as_millis() as u64, "LISTEN connection is back");
            }
            changes.send_modify(|n| *n += 1);
        };
        match listen_once(&config, &changes, &ephemeral, listening).await {
            Ok(()) => return,
            Err((was_listening, e)) => {
                if was_listening {
                    tracing::warn!(error = %e, "LISTEN connection lost; other nodes' changes wake syncs only at their timeout until it is back");
                    // Wake everyone once: changes may have been missed meanwhile.
                    changes.send_modify(|n| *n += 1);
                    backoff = FIRST_BACKOFF;
                    deaf_since.get_or_insert_with(std::time::Instant::now);
                } else {
                    tracing::debug!(error = %e, "LISTEN connection not back yet");
                    deaf_since.get_or_insert_with(std::time::Instant::now);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Listens on one connection until it fails (`true` in the error if it was
/// listening by then) or the receivers are gone; calls `listening` once
/// subscribed.
async fn listen_once(
    config: &tokio_postgres::Config,
    changes: &watch::Sender<u64>,
    ephemeral: &broadcast::Sender<String>,
    listening: impl FnOnce(),
) -> Result<(), (bool, String)> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| (false, backend(e).to_string()))?;
    let (messages_tx, mut messages) = mpsc::unbounded_channel();
    // The connection must be driven for LISTEN to run and for
    // notifications to arrive; it forwards them to this task.
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let message = (n.channel() == EPHEMERAL_CHANNEL).then(|| n.payload().to_owned());
                    if messages_tx.send(message).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection ended");
                    return;
                }
            }
        }
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {EPHEMERAL_CHANNEL}")).await {
        driver.abort();
        return Err((false, backend(e).to_string()));
    }
    listening();
    loop {
        tokio::select! {
            got = messages.recv() => match got {
                Some(None) => changes.send_modify(|n| *n += 1),
                // No receiver yet (or any more) is not an error.
                Some(Some(payload)) => drop(ephemeral.send(payload)),
                None => break,
            },
            () = changes.closed() => {
                driver.abort();
                return Ok(());
            }
        }
    }
    driver.abort();
    Err((true, "connection closed".into()))
}
