//! Wiring: configuration → store → components → HTTP listeners, and the
//! `chancery` command line. The only crate that knows every other one.

pub mod config;
mod http;
mod maintenance;
mod push_gateway;
pub mod sfu;
mod wiring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chancery_api::{ApiConfig, AppState, Metrics};
use chancery_store::DynStore;
use chancery_store_postgres::{PostgresOptions, PostgresStore};
use chancery_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
use config::DatabaseUrl;
pub use wiring::{components, components_with};

/// Opens the configured database, applying migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<DynStore> {
    let query_timeout = std::time::Duration::from_millis(config.database.query_timeout_ms);
    Ok(match config.database() {
        DatabaseUrl::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            Arc::new(
                SqliteStore::open_with(
                    &path,
                    SqliteOptions { readers: config.database.sqlite_readers, read_timeout: query_timeout },
                )
                .await
                .with_context(|| format!("opening {}", path.display()))?,
            )
        }
        DatabaseUrl::Postgres(url) => Arc::new(
            PostgresStore::connect_with(
                &url,
                PostgresOptions { max_connections: config.database.postgres_max_connections, statement_timeout: query_timeout },
            )
            .await
            .context("connecting to PostgreSQL")?,
        ),
    })
}

/// A server accepting requests.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// The server-server API's TLS listener, when `[federation]` enables it.
    pub federation_addr: Option<SocketAddr>,
    /// The built-in SFU, when `[sfu]` enables it.
    pub sfu: Option<Arc<sfu::SfuService>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    store: DynStore,
    syncer: Arc<chancery_service::Syncer>,
    sliding_sync: Arc<chancery_service::SlidingSync>,
}

impl RunningServer {
    /// Stops accepting, answers waiting long-polls, lets in-flight requests
    /// finish (within the drain deadline), then closes the database
    /// cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        // Parked long-polls answer now rather than hold the drain.
        self.syncer.close();
        self.sliding_sync.close();
        for task in self.tasks {
            task.await.context("server task panicked")?.context("server error")?;
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }
}

/// Binds the listeners and starts serving.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    start_with_federation_listener(config, None).await
}

/// [`start`], serving the server-server API on `federation_listener`
/// instead of binding `federation.listen` (tests bind first, so a server
/// name can carry the port before the server starts).
pub async fn start_with_federation_listener(
    mut config: Config,
    federation_listener: Option<std::net::TcpListener>,
) -> anyhow::Result<RunningServer> {
    // The built-in SFU's key and secret, when the operator left them to us:
    // shared by the SFU and the token service of this process.
    config.fill_sfu_keys(&chancery_service::tokens::OsEntropy);
    let store = open_store(&config).await?;
    let components = components(&config, store.clone())?;
    let health = components.health.clone();
    let push = components.push.clone();
    let pushers = components.pushers.clone();
    let media = components.media.clone();
    let delayed_events = components.delayed_events.clone();
    let openid = components.openid.clone();
    let calls = components.calls.clone();
    let federation_sender = components.federation_sender.clone();
    let syncer = components.syncer.clone();
    let sliding_sync = components.sliding_sync.clone();
    let metrics = config.metrics.listen.map(|_| Arc::new(Metrics::new()));
    let state = AppState {
        components,
        config: Arc::new(ApiConfig {
            max_request_body_bytes: config.limits.max_request_body_bytes,
            public_baseurl: config.public_baseurl(),
            federation_address: config.federation_address(),
            trust_forwarded_for: config.trust_forwarded_for,
            log_client_address: config.log.client_address,
            body_read_timeout: Duration::from_millis(config.limits.body_read_timeout_ms),
            request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
            upload_timeout: Duration::from_millis(config.media.upload_timeout_ms),
        }),
        metrics: metrics.clone(),
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let limits = config.http_limits();
    let federation_app = config.federation.enabled.then(|| chancery_api::federation_router(state.clone()));
    let mut app = chancery_api::router(state);
    let mut sfu_service = None;
    let mut sfu_task = None;
    let mut tasks_before = Vec::new();
    if config.sfu.enabled {
        let clock: Arc<dyn chancery_service::clock::Clock> = Arc::new(chancery_service::clock::SystemClock);
        let entropy: Arc<dyn chancery_service::tokens::Entropy> = Arc::new(chancery_service::tokens::OsEntropy);
        let (service, task) = sfu::start(&config.sfu, clock, entropy, shutdown_rx.clone()).await?;
        app = app.merge(sfu::router(service.clone()));
        if let Some(metrics) = &metrics {
            let service = service.clone();
            metrics.set_sfu_source(move || sfu::figures(&service.stats()));
        }
        // Participants joining and leaving reach the token service, which
        // keeps delegated delayed leaves alive and sends them.
        if let Some(calls) = calls.filter(|calls| calls.delegates()) {
            let (service, shutdown) = (service.clone(), shutdown_rx.clone());
            tasks_before.push(tokio::spawn(async move {
                sfu::feed_calls(service, calls, shutdown).await;
                Ok(())
            }));
        }
        sfu_service = Some(service);
        sfu_task = Some(task);
    }
    let mut tasks = vec![
        tokio::spawn(http::serve(listener, app, limits.clone(), None, shutdown_rx.clone())),
        tokio::spawn(maintenance::run(push, sliding_sync.clone(), media, openid, shutdown_rx.clone())),
        tokio::spawn({
            let shutdown = shutdown_rx.clone();
            async move {
                pushers.run_delivery(shutdown).await;
                Ok(())
            }
        }),
        // Fires delayed events on time, overdue ones (after a restart) first.
        tokio::spawn({
            let shutdown = shutdown_rx.clone();
            async move {
                delayed_events.run(shutdown).await;
                Ok(())
            }
        }),
    ];

    let mut federation_addr = None;
    if let Some(app) = federation_app {
        let acceptor = federation_tls(&config)?;
        let listener = match federation_listener {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(listener)?
            }
            None => tokio::net::TcpListener::bind(config.federation.listen)
                .await
                .with_context(|| format!("binding federation.listen {}", config.federation.listen))?,
        };
        federation_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(http::serve(listener, app, limits.clone(), Some(acceptor), shutdown_rx.clone())));
        // Sends local events to the other servers in their rooms: on one
        // node of the cluster at a time, the one holding the lease.
        tasks.push(tokio::spawn({
            let shutdown = shutdown_rx.clone();
            let leases: Arc<dyn chancery_store::JobLeaseStore> = store.clone();
            let clock: Arc<dyn chancery_service::clock::Clock> = Arc::new(chancery_service::clock::SystemClock);
            let node = chancery_service::tokens::random_string(
                &chancery_service::tokens::OsEntropy,
                chancery_service::tokens::ALNUM,
                12,
            );
            async move {
                let job = move |stop| {
                    let sender = federation_sender.clone();
                    async move { sender.run(stop).await }
                };
                chancery_service::leases::run_leased(
                    leases,
                    clock,
                    "federation-sender",
                    &node,
                    chancery_service::leases::SENDER_LEASE,
                    shutdown,
                    job,
                )
                .await;
                Ok(())
            }
        }));
    }

    let mut metrics_addr = None;
    if let (Some(addr), Some(metrics)) = (config.metrics.listen, metrics) {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding metrics.listen {addr}"))?;
        metrics_addr = Some(listener.local_addr()?);
        let app = chancery_api::metrics::router(metrics, health);
        tasks.push(tokio::spawn(http::serve(listener, app, limits, None, shutdown_rx)));
    }
    tracing::info!(address = %local_addr, server_name = %config.server_name, database = store.kind(), "listening");
    if let Some(addr) = metrics_addr {
        tracing::info!(address = %addr, "metrics listening");
    }
    if let Some(addr) = federation_addr {
        tracing::info!(address = %addr, "federation listening (TLS)");
    }
    tasks.extend(sfu_task);
    tasks.extend(tasks_before);
    Ok(RunningServer {
        local_addr,
        metrics_addr,
        federation_addr,
        sfu: sfu_service,
        shutdown,
        tasks,
        store,
        syncer,
        sliding_sync,
    })
}

/// The federation listener's TLS: the operator's certificate chain and key
/// (PEM), HTTP/1.1 and HTTP/2 offered by ALPN.
fn federation_tls(config: &Config) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert_path), Some(key_path)) = (&config.federation.tls_certificate, &config.federation.tls_private_key) else {
        anyhow::bail!("federation needs tls_certificate and tls_private_key");
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading federation.tls_certificate {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("federation.tls_certificate {} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading federation.tls_private_key {}", key_path.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("federation TLS certificate and key")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}
