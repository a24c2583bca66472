//! The embedded default backend: one SQLite file in WAL mode, written by a
//! single connection on its own thread with group commit ([`writer`]:
//! SQLite allows one writer at a time anyway, and one connection avoids
//! `SQLITE_BUSY` between our own writers) and read by a small pool, so
//! readers never wait for a write to finish.
//!
//! Architecture invariants: no rusqlite type crosses this crate's API;
//! writes run on the writer thread; reads bounded to a few indexed rows run
//! on the calling task (`read`), reads that grow with a room or the server
//! on the blocking pool (`read_heavy`).

mod account_data;
mod accounts;
mod delayed_events;
mod directory;
mod federation;
mod forgotten;
mod hierarchy;
mod history;
mod keys;
mod leases;
mod media;
mod openid;
mod pool;
mod push;
mod pushers;
mod relations;
mod remote_keys;
mod reports;
mod rooms;
mod row;
mod search;
mod sliding_sync;
mod thread_subscriptions;
mod user_data;
mod writer;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chancery_store::{NodeBus, PoolStats, Store, StoreError, StoreResult, StreamPositions, StreamStore};
use chancery_store_sql::migrations::pending_migrations;
use chancery_store_sql::{i, u};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use pool::Pool;

/// Migrations in order (see `chancery_store_sql::migrations`); the schema
/// version is the number applied.
const MIGRATIONS: &[&str] = &chancery_store_sql::migration_sql!();

/// Prepared statements kept per connection. rusqlite keeps 16 by default;
/// a sync pass alone uses more distinct statements than that, so the cache
/// thrashed and every query was parsed and planned again.
const STATEMENT_CACHE_CAPACITY: usize = 256;

pub struct SqliteStore {
    pool: Arc<Pool>,
    writer: writer::Writer,
    /// Sliding-sync connection state, in a file of its own
    /// ([`sliding_sync::ConnectionFile`]).
    connections: sliding_sync::ConnectionFile,
    /// Told of each appended event once committed (`Store::set_event_listener`).
    event_listener: std::sync::OnceLock<chancery_store::EventListener>,
}

/// SQLite's error as a `StoreError`: the faults a client can wait out get
/// their own variants (ARCHITECTURE.md, "Faults").
fn backend(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        // The disk (or the filesystem's quota) is full: writes fail until
        // space returns; readers go on.
        Some(ErrorCode::DiskFull) => StoreError::DiskFull,
        // Another connection (another process: `chancery create-user`
        // beside a running server) held the lock for all of
        // `BUSY_TIMEOUT_MS`, during which SQLite's busy handler kept
        // trying: a transaction that can run again later.
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Conflict(e.to_string()),
        // The progress handler stopped a read past its deadline (`pool`).
        Some(ErrorCode::OperationInterrupted) => StoreError::QueryTimedOut,
        _ => StoreError::Backend(e.to_string()),
    }
}

/// How long a connection waits for another's lock before giving up.
pub(crate) const BUSY_TIMEOUT_MS: u32 = if cfg!(test) { 200 } else { 10_000 };

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // FULL: a commit is on disk before we answer the client, so an
    // acknowledged registration survives a power cut, not only a crash.
    // journal_size_limit: after a burst, the WAL file is cut back to 64 MiB
    // when it starts over. temp_store MEMORY: the savepoint journal of group commit (see
    // `writer`) stays in memory instead of spilling to a temporary file.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
    stable_plans(conn)
}

/// The query planner's stability guarantee: a statement's plan does not
/// depend on the values bound to it. Without it, a statement that binds a
/// column a partial index restricts to a literal (`event_type = ?2` beside
/// `... WHERE event_type = 'm.room.member'`) is planned again each time
/// that value changes, which was a tenth of a send's CPU. The queries that
/// want a partial index name its literal.
pub(crate) fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map(drop)
}

/// How a [`SqliteStore`] reads.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    /// Read-only connections (at least one).
    pub readers: usize,
    /// How long one read may run before it is interrupted.
    pub read_timeout: std::time::Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { readers: 4, read_timeout: std::time::Duration::from_secs(20) }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies
    /// pending migrations.
    pub async fn open(path: &Path, readers: usize) -> StoreResult<Self> {
        Self::open_with(path, SqliteOptions { readers, ..SqliteOptions::default() }).await
    }

    /// [`Self::open`] with every option.
    pub async fn open_with(path: &Path, options: SqliteOptions) -> StoreResult<Self> {
        let path = path.to_owned();
        let connections = sliding_sync::ConnectionFile::open(&path).await?;
        let readers = options.readers.max(1);
        let pool = tokio::task::spawn_blocking(move || -> StoreResult<(Pool, Connection)> {
            let mut writer = Connection::open(&path).map_err(backend)?;
            writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
            configure(&writer).map_err(backend)?;
            migrate(&mut writer)?;
            let mut reader_conns = Vec::with_capacity(readers);
            for _ in 0..readers {
                let conn = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(backend)?;
                conn.execute_batch("PRAGMA foreign_keys = ON;").map_err(backend)?;
                conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into())).map_err(backend)?;
                stable_plans(&conn).map_err(backend)?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
                reader_conns.push(pool::Reader::new(conn));
            }
            let checkpointer = Connection::open(&path).map_err(backend)?;
            configure(&checkpointer).map_err(backend)?;
            Ok((Pool::new(writer, reader_conns, options.read_timeout), checkpointer))
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        let (pool, checkpointer) = pool;
        let pool = Arc::new(pool);
        let writer = writer::Writer::start(Arc::clone(&pool), checkpointer)?;
        Ok(Self { pool, writer, connections, event_listener: std::sync::OnceLock::new() })
    }

    /// Runs `f` in an IMMEDIATE transaction on the writer connection,
    /// committed with the writes queued beside it; on error nothing of `f`
    /// is kept.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(f).await
    }

    /// Runs `f` on a reader connection (a consistent snapshot per statement;
    /// use a transaction inside `f` for a snapshot across statements), on
    /// the calling task: for reads bounded to a few indexed rows, which
    /// take microseconds on a warm page cache, less than handing them to
    /// another thread and back (which doubled a sync's latency).
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T>,
    {
        let _permit = self.pool.reader_permit().await?;
        self.pool.with_reader(f)
    }

    /// Like [`Self::read`], on the blocking pool: for reads whose size grows
    /// with a room or the server (whole state, member lists, searches),
    /// which must not stall the tasks sharing this thread.
    async fn read_heavy<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permits = self.pool.heavy_reader_permit().await?;
        let pool = Arc::clone(&self.pool);
        tokio::task::spawn_blocking(move || {
            let _permits = permits;
            pool.with_reader(f)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// A stream's committed position, read by `sql`: the single writer
    /// allocates `MAX(stream_pos) + 1` of the stream's table and commits in
    /// order, so its largest position is the "everything at or below is
    /// visible" watermark.
    async fn committed_pos(&self, sql: &'static str) -> StoreResult<u64> {
        self.read(|conn| {
            conn.prepare_cached(sql).and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0))).map(u).map_err(backend)
        })
        .await
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)").map_err(backend)?;
    let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0)).map_err(backend)?;
    for index in pending_migrations(current, MIGRATIONS.len())? {
        tx.execute_batch(MIGRATIONS[index]).map_err(backend)?;
        tx.execute("DELETE FROM schema_version", []).map_err(backend)?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [index as i64 + 1]).map_err(backend)?;
        tracing::info!(version = index + 1, "applied SQLite migration");
    }
    tx.commit().map_err(backend)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend)).await
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    async fn close(&self) {
        let pool = Arc::clone(&self.pool);
        let writer = self.writer.stop();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(writer) = writer {
                let _ = writer.join();
            }
            pool.close();
        })
        .await;
        self.connections.close();
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn set_event_listener(&self, listener: chancery_store::EventListener) {
        // Once per store: a second listener would be a second wiring of components on
        // the same store, which nothing does.
        let _ = self.event_listener.set(listener);
    }
}

/// One process owns the database: nothing to hear from other nodes.
impl NodeBus for SqliteStore {}

#[async_trait]
impl StreamStore for SqliteStore {
    async fn rooms_changed(&self, events: (u64, u64), receipts: (u64, u64), limit: usize) -> StoreResult<Option<Vec<String>>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT room_id FROM events WHERE stream_pos > ?1 AND stream_pos <= ?2
                     UNION
                     SELECT room_id FROM receipts WHERE stream_pos > ?3 AND stream_pos <= ?4
                     LIMIT ?5",
                )
                .map_err(backend)?;
            let bound = i(limit as u64).saturating_add(1);
            let params = rusqlite::params![i(events.0), i(events.1), i(receipts.0), i(receipts.1), bound];
            let rooms = stmt.query_map(params, |r| r.get::<_, String>(0)).map_err(backend)?;
            let rooms = rooms.collect::<Result<Vec<_>, _>>().map_err(backend)?;
            Ok((rooms.len() <= limit).then_some(rooms))
        })
        .await
    }

    async fn stream_positions(&self) -> StoreResult<StreamPositions> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT (SELECT COALESCE(MAX(stream_pos), 0) FROM events),
                        (SELECT COALESCE(MAX(stream_pos), 0) FROM account_data),
                        (SELECT COALESCE(MAX(stream_pos), 0) FROM receipts),
                        (SELECT COALESCE(MAX(stream_pos), 0) FROM device_list_changes),
                        (SELECT pos FROM to_device_position WHERE id = 0),
                        (SELECT pos FROM thread_subscriptions_position WHERE id = 0)",
            )
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok(StreamPositions {
                        events: u(r.get(0)?),
                        account_data: u(r.get(1)?),
                        receipts: u(r.get(2)?),
                        device_lists: u(r.get(3)?),
                        // The counter, not the table's maximum: read
                        // messages are deleted, so the maximum goes back.
                        to_device: u(r.get(4)?),
                        thread_subscriptions: u(r.get(5)?),
                    })
                })
            })
            .map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chancery_store::{AccountStore, NewAccount};

    use super::*;

    /// A write lock another process holds past the busy timeout (as
    /// `chancery create-user` beside a busy server might) is a conflict to
    /// wait out (503 with Retry-After), not a failure of the server; the
    /// next write after it is released goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_held_elsewhere_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chancery.db");
        let store = SqliteStore::open(&path, 1).await.unwrap();
        let account = |user: &str| NewAccount { user_id: user.into(), password_hash: None, is_admin: false, created_ts: 1 };
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let refused = store.create_account(account("@a:x"), None, None, 1).await;
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
        other.execute_batch("ROLLBACK").unwrap();
        store.create_account(account("@a:x"), None, None, 1).await.unwrap();
        assert!(store.account("@a:x").await.unwrap().is_some());
        store.close().await;
    }
}
