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

/// Listens until the sender's receivers are all gone, reconnecting with a
/// bounded back-off when the connection drops.
pub(crate) async fn listen(config: tokio_postgres::Config, changes: watch::Sender<u64>, ephemeral: broadcast::Sender<String>) {
    let mut backoff = Duration::from_millis(200);
    while !changes.is_closed() {
        match listen_once(&config, &changes, &ephemeral).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection lost; other nodes' changes wake syncs only at their timeout until it is back");
                // Wake everyone once: changes may have been missed meanwhile.
                changes.send_modify(|n| *n += 1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    changes: &watch::Sender<u64>,
    ephemeral: &broadcast::Sender<String>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| backend(e).to_string())?;
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
    client.batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {EPHEMERAL_CHANNEL}")).await.map_err(|e| backend(e).to_string())?;
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
    Err("connection closed".into())
}
