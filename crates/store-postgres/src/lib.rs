//! The scale-out backend: one PostgreSQL database shared by any number of
//! Chancery nodes. Every guarantee the SQLite backend gets from having a
//! single writer is rebuilt here from row locks, conditional updates and
//! advisory locks, because here the writers are many and on other machines.
//!
//! Architecture invariant: no tokio-postgres or deadpool type crosses this
//! crate's API; their errors become [`StoreError::Backend`].

mod account_data;
mod accounts;
mod appender;
mod delayed_events;
mod directory;
mod federation;
mod forgotten;
mod hierarchy;
mod history;
mod json;
mod keys;
mod leases;
mod media;
mod migrations;
mod notify;
mod openid;
mod push;
mod pushers;
mod query;
mod relations;
mod remote_keys;
mod reports;
mod rooms;
mod search;
mod sliding_sync;
mod thread_subscriptions;
mod user_data;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chancery_store::{NodeBus, PoolStats, Store, StoreError, StoreResult, StreamPositions, StreamStore};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use migrations::SCHEMA_VERSION;

use chancery_store_sql::{i, u};

use crate::query::{get, query};

pub struct PostgresStore {
    pool: Pool,
    /// Permits of heavy reads (see `heavy_client`).
    heavy_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Bumped when any node commits a change syncs wait for.
    changes: tokio::sync::watch::Receiver<u64>,
    /// What nodes publish for each other's memory (typing, presence).
    ephemeral: tokio::sync::broadcast::Sender<String>,
    listener: tokio::task::JoinHandle<()>,
    /// Commits this node's appends in batches (`appender`).
    appender: appender::Appender,
    /// Told of each appended event once committed (`Store::set_event_listener`).
    event_listener: std::sync::Arc<std::sync::OnceLock<chancery_store::EventListener>>,
}

/// Keeps the server's message and SQLSTATE, which tokio-postgres' own
/// `Display` ("db error") hides. Never formats the connection config, so a
/// password in the URL cannot leak into logs. Faults that pass get their
/// own variants ([`fault_of`]).
fn backend(e: tokio_postgres::Error) -> StoreError {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        // A NUL character PostgreSQL refuses where SQLite stores it: in text
        // (22021), or as `\u0000` in JSON it converts (22P05). Bad client
        // input, not a database failure.
        use tokio_postgres::error::SqlState;
        if [SqlState::CHARACTER_NOT_IN_REPERTOIRE, SqlState::UNTRANSLATABLE_CHARACTER].contains(db.code()) {
            return StoreError::TextNotStorable;
        }
        let detail = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
        return fault_of(db.code().code(), detail.clone()).unwrap_or(StoreError::Backend(detail));
    }
    let detail = match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    // With no SQLSTATE, the connection failed: refused, reset, closed (the
    // server stopped, or the network went away). What else tokio-postgres
    // reports without one is our bug (a column of the wrong type) and has
    // no I/O error under it.
    let io = e.source().is_some_and(|cause| cause.is::<std::io::Error>());
    if e.is_closed() || io {
        return StoreError::Unavailable(detail);
    }
    StoreError::Backend(detail)
}

/// The faults a SQLSTATE names that a client can wait out
/// (ARCHITECTURE.md, "Faults"): `None` for the others.
fn fault_of(sqlstate: &str, detail: String) -> Option<StoreError> {
    Some(match sqlstate {
        // serialization_failure, deadlock_detected: rolled back, safe to
        // run again.
        "40001" | "40P01" => StoreError::Conflict(detail),
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting or
        // stopping), too_many_connections, and every connection exception
        // (class 08).
        "57P01" | "57P02" | "57P03" | "53300" => StoreError::Unavailable(detail),
        s if s.starts_with("08") => StoreError::Unavailable(detail),
        // disk_full: as SQLite's SQLITE_FULL.
        "53100" => StoreError::DiskFull,
        // query_canceled: statement_timeout (see `connect_with`).
        "57014" => StoreError::QueryTimedOut,
        _ => return None,
    })
}

/// A connection could not be had: the database is unreachable (or every
/// connection stayed busy for the pool's whole wait).
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match backend(e) {
            StoreError::Backend(detail) => StoreError::Unavailable(detail),
            other => other,
        },
        other => StoreError::Unavailable(format!("connection pool: {other}")),
    }
}

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone, Copy)]
pub struct PostgresOptions {
    /// This node's share of the server's `max_connections`.
    pub max_connections: usize,
    /// How long one statement may run before the server cancels it.
    pub statement_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self { max_connections: 16, statement_timeout: Duration::from_secs(20) }
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and applies pending migrations.
    ///
    /// `url` is anything `tokio_postgres::Config::from_str` accepts, e.g.
    /// - `postgres://user:password@db.example:5432/chancery`
    /// - `postgres://user@%2Frun%2Fpostgresql/chancery` (Unix socket: the
    ///   directory, percent-encoded, in place of the host)
    /// - `postgres:///chancery?host=/run/postgresql&user=chancery`
    /// - the key/value form, `host=/run/postgresql dbname=chancery user=chancery`
    ///
    /// A host is required (tokio-postgres has no libpq-style default
    /// socket); the Unix socket port defaults to 5432 like libpq. TLS is
    /// not supported yet: `sslmode=require` fails to connect, while the
    /// default `prefer` falls back to plain text.
    ///
    /// `max_connections` bounds this node's share of the server's
    /// `max_connections`; the pool opens connections lazily.
    pub async fn connect(url: &str, max_connections: usize) -> StoreResult<Self> {
        Self::connect_with(url, PostgresOptions { max_connections, ..PostgresOptions::default() }).await
    }

    /// [`Self::connect`] with every option.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> StoreResult<Self> {
        let max_connections = options.max_connections;
        // The parser's errors name the offending key, never its value.
        let mut config = tokio_postgres::Config::from_str(url).map_err(backend)?;
        // Every statement of this node is bounded (migrations lift it for
        // their transaction); a read past it fails with `QueryTimedOut`
        // instead of holding its connection. Added to the options the URL
        // gives, which stay as they are.
        let timeout_ms = options.statement_timeout.as_millis().max(1);
        let given = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        config.options(format!("{given}-c statement_timeout={timeout_ms}"));
        // Fast recycling: a dead connection surfaces as one failed request,
        // which is cheaper than a round trip on every checkout.
        let (changes_tx, changes) = tokio::sync::watch::channel(0);
        let (ephemeral, _) = tokio::sync::broadcast::channel(notify::EPHEMERAL_BACKLOG);
        let listener = tokio::spawn(notify::listen(config.clone(), changes_tx, ephemeral.clone()));
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            // Bounded waits turn an unreachable or exhausted database into
            // an error the client sees, instead of a request hanging forever.
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        let event_listener = std::sync::Arc::new(std::sync::OnceLock::new());
        let appender = appender::Appender::start(pool.clone(), std::sync::Arc::clone(&event_listener));
        let heavy_slots = std::sync::Arc::new(tokio::sync::Semaphore::new((max_connections / 2).max(1)));
        let store = Self { pool, heavy_slots, changes, ephemeral, listener, appender, event_listener };
        migrations::migrate(&mut store.client().await?).await?;
        Ok(store)
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A connection for a read whose size grows with a room or the server
    /// (whole state, member lists, searches), with the permit that keeps
    /// such reads to half the pool: the small reads every request makes
    /// (the access-token check first) always find a connection.
    async fn heavy_client(&self) -> StoreResult<(tokio::sync::OwnedSemaphorePermit, deadpool_postgres::Client)> {
        let permit = std::sync::Arc::clone(&self.heavy_slots)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Backend("the database is closed".into()))?;
        Ok((permit, self.client().await?))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT 1").await.map_err(backend)?;
        client.query_one(&stmt, &[]).await.map_err(backend)?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        let status = self.pool.status();
        PoolStats { connections: status.size as u64, idle: status.available as u64 }
    }

    async fn close(&self) {
        // Every write is its own committed transaction, so there is nothing
        // to flush: closing drops idle connections now and the busy ones as
        // they come back.
        self.appender.stop();
        self.pool.close();
        self.listener.abort();
    }

    fn set_event_listener(&self, listener: chancery_store::EventListener) {
        let _ = self.event_listener.set(listener);
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

#[async_trait]
impl NodeBus for PostgresStore {
    async fn publish_ephemeral(&self, payload: &str) -> StoreResult<()> {
        if payload.len() > chancery_store::MAX_EPHEMERAL_PAYLOAD_BYTES {
            return Err(StoreError::PayloadTooLarge);
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT pg_notify('chancery_ephemeral', $1)").await.map_err(backend)?;
        client.execute(&stmt, &[&payload]).await.map_err(backend)?;
        Ok(())
    }

    fn ephemeral_updates(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.ephemeral.subscribe())
    }
}

#[async_trait]
impl StreamStore for PostgresStore {
    fn remote_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.clone())
    }

    async fn rooms_changed(&self, events: (u64, u64), receipts: (u64, u64), limit: usize) -> StoreResult<Option<Vec<String>>> {
        let client = self.client().await?;
        let bound = i(limit as u64).saturating_add(1);
        let rows = query(
            &client,
            "SELECT room_id FROM events WHERE stream_pos > $1 AND stream_pos <= $2
             UNION
             SELECT room_id FROM receipts WHERE stream_pos > $3 AND stream_pos <= $4
             LIMIT $5",
            &[&i(events.0), &i(events.1), &i(receipts.0), &i(receipts.1), &bound],
        )
        .await?;
        let rooms = rows.iter().map(|r| get::<String>(r, 0)).collect::<StoreResult<Vec<_>>>()?;
        Ok((rooms.len() <= limit).then_some(rooms))
    }

    async fn stream_positions(&self) -> StoreResult<StreamPositions> {
        let client = self.client().await?;
        // The same reads as `current_stream_pos` and the counters, in one
        // statement: one snapshot, so the positions are one cut.
        let rows = query(
            &client,
            "SELECT COALESCE((SELECT pos FROM stream_position), 0),
                    COALESCE((SELECT pos FROM stream_counters WHERE stream = 'account_data'), 0),
                    COALESCE((SELECT pos FROM stream_counters WHERE stream = 'receipts'), 0),
                    COALESCE((SELECT pos FROM stream_counters WHERE stream = 'device_lists'), 0),
                    COALESCE((SELECT pos FROM stream_counters WHERE stream = 'to_device'), 0),
                    COALESCE((SELECT pos FROM stream_counters WHERE stream = 'thread_subscriptions'), 0)",
            &[],
        )
        .await?;
        let row = rows.first().ok_or_else(|| StoreError::Backend("no stream positions row".into()))?;
        let pos = |idx: usize| get::<i64>(row, idx).map(u);
        Ok(StreamPositions {
            events: pos(0)?,
            account_data: pos(1)?,
            receipts: pos(2)?,
            device_lists: pos(3)?,
            to_device: pos(4)?,
            thread_subscriptions: pos(5)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_name_the_faults_a_client_can_wait_out() {
        let fault = |code: &str| fault_of(code, format!("detail of {code}"));
        for code in ["40001", "40P01"] {
            assert!(matches!(fault(code), Some(StoreError::Conflict(_))), "{code}");
        }
        for code in ["57P01", "57P02", "57P03", "53300", "08000", "08003", "08006", "08001"] {
            assert!(matches!(fault(code), Some(StoreError::Unavailable(_))), "{code}");
        }
        assert!(matches!(fault("53100"), Some(StoreError::DiskFull)));
        // Domain conditions and bugs stay what they are.
        for code in ["23505", "22P02", "42P01", "XX000", "55P03"] {
            assert!(fault(code).is_none(), "{code}");
        }
    }
}
