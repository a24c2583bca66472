//! One writer connection and a fixed set of read-only connections.
//!
//! Reads whose size grows with a room or the server ("heavy": whole state,
//! member lists, searches) may hold all readers but one, so the small
//! reads every request makes (the access-token check first) always find a
//! connection. Every read runs under a deadline, enforced by SQLite's
//! progress handler: past it the statement is interrupted and the read
//! fails with `QueryTimedOut` instead of holding its connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chancery_store::{PoolStats, StoreError, StoreResult};
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Pool {
    writer: Mutex<Option<Connection>>,
    readers: Mutex<Vec<Reader>>,
    reader_slots: Arc<Semaphore>,
    /// Heavy reads hold one of these besides their reader.
    heavy_slots: Arc<Semaphore>,
    reader_count: usize,
    read_timeout: Duration,
}

/// A read-only connection and the deadline its progress handler enforces.
pub(crate) struct Reader {
    conn: Connection,
    /// Milliseconds since [`epoch`]; 0: no read running.
    deadline_ms: Arc<AtomicU64>,
}

/// Virtual machine steps between two looks at the deadline (well under a
/// millisecond of work).
const PROGRESS_STEPS: i32 = 10_000;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Reader {
    pub(crate) fn new(conn: Connection) -> Self {
        let deadline_ms = Arc::new(AtomicU64::new(0));
        let deadline = Arc::clone(&deadline_ms);
        conn.progress_handler(
            PROGRESS_STEPS,
            Some(move || {
                let deadline = deadline.load(Ordering::Relaxed);
                deadline != 0 && now_ms() > deadline
            }),
        );
        Self { conn, deadline_ms }
    }
}

fn closed() -> StoreError {
    StoreError::Backend("the database is closed".into())
}

impl Pool {
    /// With a single reader, heavy reads can delay the small ones.
    pub(crate) fn new(writer: Connection, readers: Vec<Reader>, read_timeout: Duration) -> Self {
        let reader_count = readers.len();
        Self {
            writer: Mutex::new(Some(writer)),
            readers: Mutex::new(readers),
            reader_slots: Arc::new(Semaphore::new(reader_count)),
            heavy_slots: Arc::new(Semaphore::new(reader_count.saturating_sub(1).max(1))),
            reader_count,
            read_timeout,
        }
    }

    pub(crate) fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> StoreResult<T>) -> StoreResult<T> {
        // A poisoned lock means a panic mid-transaction; the transaction was
        // rolled back when it dropped, so the connection is still sound.
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = guard.as_mut().ok_or_else(closed)?;
        f(conn)
    }

    /// Waits (asynchronously) for a free reader.
    pub(crate) async fn reader_permit(&self) -> StoreResult<OwnedSemaphorePermit> {
        Arc::clone(&self.reader_slots).acquire_owned().await.map_err(|_| closed())
    }

    /// Waits for a free reader that a heavy read may take: one is always
    /// left for the others.
    pub(crate) async fn heavy_reader_permit(&self) -> StoreResult<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let heavy = Arc::clone(&self.heavy_slots).acquire_owned().await.map_err(|_| closed())?;
        Ok((heavy, self.reader_permit().await?))
    }

    /// Runs `f` on a reader, under the read deadline; the caller holds a
    /// permit, so one is free.
    pub(crate) fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let reader = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop().ok_or_else(closed)?;
        let deadline = now_ms().saturating_add(u64::try_from(self.read_timeout.as_millis()).unwrap_or(u64::MAX));
        reader.deadline_ms.store(deadline.max(1), Ordering::Relaxed);
        let out = f(&reader.conn);
        reader.deadline_ms.store(0, Ordering::Relaxed);
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).push(reader);
        out
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let idle = self.reader_slots.available_permits() as u64;
        PoolStats { connections: self.reader_count as u64 + 1, idle }
    }

    /// Closes the readers, then checkpoints the WAL into the main file and
    /// closes the writer, so a clean shutdown leaves one self-contained file.
    pub(crate) fn close(&self) {
        self.reader_slots.close();
        self.heavy_slots.close();
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Err(e) = writer.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
            }
            if let Err((_, e)) = writer.close() {
                tracing::warn!(error = %e, "closing the SQLite writer failed");
            }
        }
    }
}
