//! One writer connection and a fixed set of read-only connections.

use std::sync::Mutex;

use chancery_store::{PoolStats, StoreError, StoreResult};
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Pool {
    writer: Mutex<Option<Connection>>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: std::sync::Arc<Semaphore>,
    reader_count: usize,
}

fn closed() -> StoreError {
    StoreError::Backend("the database is closed".into())
}

impl Pool {
    pub(crate) fn new(writer: Connection, readers: Vec<Connection>) -> Self {
        let reader_count = readers.len();
        Self {
            writer: Mutex::new(Some(writer)),
            readers: Mutex::new(readers),
            reader_slots: std::sync::Arc::new(Semaphore::new(reader_count)),
            reader_count,
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
        std::sync::Arc::clone(&self.reader_slots).acquire_owned().await.map_err(|_| closed())
    }

    /// Runs `f` on a reader; the caller holds a permit, so one is free.
    pub(crate) fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop().ok_or_else(closed)?;
        let out = f(&conn);
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
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
