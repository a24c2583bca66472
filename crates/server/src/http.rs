//! The HTTP listener: admits connections within the configured caps (in
//! all, and per client address), serves each with hyper under a header
//! read timeout, and on shutdown lets requests in flight finish within a
//! drain deadline. Body and request timeouts are the API's (`ApiConfig`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use chancery_api::ApiError;
use chancery_service::Error;
use chancery_service::ratelimit::address_key;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// Connections being answered "too many connections" at once; past it a
/// connection over a cap is closed without an answer.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused connection may take to send its request head.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client over a connection cap is told to wait.
const REFUSAL_RETRY_AFTER_MS: u64 = 1_000;

/// What one listener allows its clients.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A request head (and the next one on a kept-alive connection) must
    /// arrive within this time, or the connection is closed.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// `None` behind a trusted proxy, whose one address carries everyone.
    pub max_connections_per_address: Option<usize>,
    /// How long shutdown waits for requests in flight before closing
    /// their connections.
    pub shutdown_drain: Duration,
}

/// Serves `router` on `listener` until `shutdown` turns true, then drains.
/// With `tls`, each connection first completes a TLS handshake (within the
/// header read timeout).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let per_address = limits.max_connections_per_address.map(AddressCounts::new);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // for connections to close instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        };
        let _ = stream.set_nodelay(true);
        let admitted = admit(&connections, per_address.as_ref(), peer.ip());
        match admitted {
            Ok(slot) => {
                let service = tower::ServiceExt::map_request(router.clone(), move |mut req: axum::http::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                });
                match &tls {
                    None => {
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
                            .into_owned();
                        let connection = graceful.watch(connection);
                        tasks.spawn(async move {
                            let _slot = slot;
                            if let Err(e) = connection.await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                        let handshake_timeout = limits.header_read_timeout;
                        tasks.spawn(async move {
                            let _slot = slot;
                            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
                                .into_owned();
                            if let Err(e) = watcher.watch(connection).await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            Err(refusal) => {
                if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
                    tasks.spawn(refuse(stream, refusal, permit));
                }
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(connections = open, "draining connections");
    }
    if tokio::time::timeout(limits.shutdown_drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            drain_ms = limits.shutdown_drain.as_millis() as u64,
            "requests still in flight after the drain deadline; closing their connections"
        );
    }
    tasks.shutdown().await;
    Ok(())
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    ServerFull,
    AddressFull,
}

/// What holds a connection's place under the caps until it closes.
struct Slot {
    _connection: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
}

fn admit(connections: &Arc<Semaphore>, per_address: Option<&Arc<AddressCounts>>, ip: IpAddr) -> Result<Slot, Refusal> {
    let address = match per_address {
        Some(counts) => Some(counts.take(ip).ok_or(Refusal::AddressFull)?),
        None => None,
    };
    let connection = Arc::clone(connections).try_acquire_owned().map_err(|_| Refusal::ServerFull)?;
    Ok(Slot { _connection: connection, _address: address })
}

/// Answers the connection's first request with 503 (server full) or 429
/// (this address has too many connections), then closes it.
async fn refuse(stream: TcpStream, refusal: Refusal, _permit: OwnedSemaphorePermit) {
    tracing::warn!(reason = ?refusal, "connection refused: over the connection limit");
    let service = hyper::service::service_fn(move |_req: axum::http::Request<Incoming>| async move {
        Ok::<Response, Infallible>(refusal_response(refusal))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false).timer(TokioTimer::new()).header_read_timeout(REFUSAL_READ_TIMEOUT);
    let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT * 2, builder.serve_connection(TokioIo::new(stream), service)).await;
}

fn refusal_response(refusal: Refusal) -> Response {
    let error = match refusal {
        Refusal::ServerFull => Error::Unavailable {
            message: "the server has too many open connections".into(),
            retry_after_ms: REFUSAL_RETRY_AFTER_MS,
        },
        Refusal::AddressFull => Error::LimitExceeded { retry_after_ms: REFUSAL_RETRY_AFTER_MS },
    };
    ApiError::from(error).into_response()
}

/// Open connections per client address (IPv6 by /64, as the rate
/// limiters key them).
struct AddressCounts {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl AddressCounts {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, open: Mutex::new(HashMap::new()) })
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(&ip.to_string());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { counts: Arc::clone(self), key })
    }
}

struct AddressSlot {
    counts: Arc<AddressCounts>,
    key: String,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_slots_are_counted_per_network_and_given_back() {
        let counts = AddressCounts::new(2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let first = counts.take(a).unwrap();
        let _second = counts.take(b).unwrap();
        assert!(counts.take(a).is_none(), "one /64 shares one count");
        assert!(counts.take(other).is_some(), "another /64 has its own");
        drop(first);
        assert!(counts.take(b).is_some());
        drop(counts.take(other));
        assert_eq!(counts.open.lock().unwrap().len(), 1, "a network with no connection is forgotten");
    }

    #[test]
    fn refusals_carry_their_errcode_and_retry_after() {
        let full = refusal_response(Refusal::ServerFull);
        assert_eq!(full.status(), 503);
        assert_eq!(full.headers()["retry-after"], "1");
        let address = refusal_response(Refusal::AddressFull);
        assert_eq!(address.status(), 429);
        assert_eq!(address.headers()["retry-after"], "1");
    }
}
