//! Group commit: every write of the process goes to one thread, which runs
//! the writes waiting at that moment (up to [`MAX_BATCH`]) in one
//! transaction, each inside its own savepoint, and commits once. With
//! `synchronous = FULL` a commit costs an fsync; concurrent writers
//! (senders in different rooms, registrations) now share it instead of
//! queueing for one each. A write that fails rolls back to its savepoint
//! and leaves the others of its batch alone; nobody hears "done" before
//! the commit that holds their write is on disk.
//!
//! Checkpoints (copying the WAL back into the database file) run on a
//! second thread with its own connection, so the writes queued meanwhile
//! do not wait for them: SQLite's automatic checkpoint would run inside
//! the commit that crossed the threshold, on this thread.

use std::cell::Cell;
use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chancery_store::{AfterCaller, StoreError, StoreResult};
use rusqlite::hooks::Wal;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::backend;
use crate::pool::Pool;

/// Writes committed together at most.
const MAX_BATCH: usize = 64;

/// WAL growth (pages) after which the checkpointer is asked to run:
/// SQLite's own automatic-checkpoint default.
const CHECKPOINT_PAGES: c_int = 1000;

/// WAL size (pages) from which the writer checkpoints itself between two
/// batches. The WAL starts over (reusing its file from the beginning) only
/// when a write begins with every frame already copied back, which the
/// checkpointer, running beside a busy writer, seldom leaves it: without
/// this the WAL grew by the whole write volume (gigabytes in a benchmark).
/// By then the checkpointer has copied nearly everything, so this is short.
const RESTART_PAGES: c_int = 4 * CHECKPOINT_PAGES;

thread_local! {
    /// Pages in the WAL after the last commit on this thread's connection
    /// (set by the WAL hook, which runs inside the commit).
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

fn record_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// Runs after the batch's commit with its error, if any: wakes the
/// caller and returns what is to run once all the batch's callers are woken.
type Finish = Box<dyn FnOnce(Option<&StoreError>) -> Option<AfterCaller> + Send>;
type Job = Box<dyn WriteJob>;

/// A write waiting for its batch.
trait WriteJob: Send {
    /// Runs the write in the batch's transaction: its error if it failed,
    /// and what finishes it once the batch is committed.
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> (Result<(), StoreError>, Finish);
    /// The batch failed before this write ran: its caller gets the
    /// batch's error (a full disk, a lock held elsewhere), not a vague one.
    fn abandon(self: Box<Self>, error: &StoreError);
}

struct Write<F, C, T> {
    f: F,
    committed: C,
    done: tokio::sync::oneshot::Sender<StoreResult<T>>,
}

impl<T, F, C> WriteJob for Write<F, C, T>
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    C: FnOnce() -> Option<AfterCaller> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> (Result<(), StoreError>, Finish) {
        let Write { f, committed, done } = *self;
        let out = f(tx);
        let outcome = out.as_ref().map(drop).map_err(Clone::clone);
        let finish: Finish = Box::new(move |commit_error| {
            let out = match (out, commit_error) {
                (Ok(_), Some(e)) => Err(e.clone()),
                (out, _) => out,
            };
            // Tasks woken from this thread are queued in the order they
            // are woken: `committed` decides what goes ahead of the
            // caller and what after. The caller may have gone (its
            // request was cancelled); the write stands either way.
            let after = if out.is_ok() { committed() } else { None };
            let _ = done.send(out);
            after
        });
        (outcome, finish)
    }

    fn abandon(self: Box<Self>, error: &StoreError) {
        let _ = self.done.send(Err(error.clone()));
    }
}

/// A failure of the database rather than of one write's content.
fn is_fault(e: &StoreError) -> bool {
    matches!(e, StoreError::DiskFull | StoreError::Conflict(_) | StoreError::Unavailable(_))
}

pub(crate) struct Writer {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn stopped() -> StoreError {
    StoreError::Backend("the database is closed".into())
}

impl Writer {
    /// Starts the writer thread on the pool's writer connection, and the
    /// checkpointer thread on `checkpointer` (a read-write connection to
    /// the same database).
    pub(crate) fn start(pool: Arc<Pool>, checkpointer: Connection) -> StoreResult<Self> {
        let (jobs, queue) = channel::<Job>();
        let (wake_checkpointer, checkpoints) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_checkpoints(&checkpointer, &checkpoints))
            .map_err(|e| StoreError::Backend(format!("starting the checkpoint thread: {e}")))?;
        // Our hook replaces SQLite's automatic checkpoint (which is itself a
        // WAL hook).
        pool.with_writer(|conn| {
            conn.wal_hook(Some(record_wal_pages));
            Ok(())
        })?;
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(&pool, &queue, &wake_checkpointer))
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        Ok(Self { jobs: Mutex::new(Some(jobs)), thread: Mutex::new(Some(thread)) })
    }

    /// Runs `f` in the next batch; returns its result once the batch is
    /// committed (or the commit's error).
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.write_then(f, || None).await
    }

    /// Like [`Self::write`], and runs `committed` on the writer thread as
    /// soon as the write is committed (not if it failed), before the caller
    /// is woken, and what it returns once every caller of the batch is.
    pub(crate) async fn write_then<T, F, C>(&self, f: F, committed: C) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
        C: FnOnce() -> Option<AfterCaller> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(Write { f, committed, done });
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        }
        // A dropped sender means the write never ran: it panicked, or the
        // batch could not begin (logged by the writer thread).
        result.await.map_err(|_| StoreError::Backend("the write was not carried out".into()))?
    }

    /// Refuses new writes; the thread finishes the queued ones and ends.
    /// Returns it to be joined (once).
    pub(crate) fn stop(&self) -> Option<JoinHandle<()>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.thread.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn run_cached(tx: &Transaction<'_>, sql: &str) -> StoreResult<()> {
    tx.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop).map_err(backend)
}

/// Checkpoints whenever the writer asks, until the writer ends. PASSIVE:
/// it copies what no reader still needs and never blocks the writer.
fn run_checkpoints(conn: &Connection, wakes: &Receiver<()>) {
    while wakes.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

fn run(pool: &Pool, queue: &Receiver<Job>, checkpointer: &SyncSender<()>) {
    // The WAL's size when the checkpointer was last asked: it is asked
    // again once CHECKPOINT_PAGES more have been written. (The WAL only
    // starts over once a checkpoint has caught up and no reader holds it,
    // which a busy server seldom allows; asking on every commit past the
    // threshold made every commit's pages a checkpoint of their own.)
    let mut asked_at: c_int = 0;
    let mut caught_up_at: c_int = 0;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
        let mut waiting = batch.into_iter();
        let committed = pool.with_writer(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            for job in waiting.by_ref() {
                run_cached(&tx, "SAVEPOINT job")?;
                let outcome = match catch_unwind(AssertUnwindSafe(|| job.run(&tx))) {
                    Ok((outcome, finish)) => {
                        finishes.push(finish);
                        outcome
                    }
                    Err(_) => {
                        tracing::error!("a database write panicked; it was rolled back");
                        Err(StoreError::Backend("the write panicked".into()))
                    }
                };
                if let Err(job_error) = outcome
                    && let Err(e) = run_cached(&tx, "ROLLBACK TO job")
                {
                    // SQLite rolls the whole transaction back on some
                    // errors (a full disk among them): then the write's
                    // error is why the batch failed.
                    return Err(if is_fault(&job_error) { job_error } else { e });
                }
                run_cached(&tx, "RELEASE job")?;
            }
            tx.commit().map_err(backend)
        });
        if let Err(e) = &committed {
            let abandoned = waiting.len();
            tracing::error!(error = %e, writes = finishes.len() + abandoned, "a batch of database writes failed");
            for job in waiting {
                job.abandon(e);
            }
        }
        // Every caller of the batch is woken before what any listener left
        // for after them (a busy room's syncs), so none of them waits
        // behind another's.
        let afters: Vec<AfterCaller> = finishes.into_iter().filter_map(|finish| finish(committed.as_ref().err())).collect();
        for after in afters {
            after();
        }
        let pages = WAL_PAGES.with(Cell::get);
        if pages < asked_at {
            // The WAL started over.
            asked_at = 0;
            caught_up_at = 0;
        }
        if pages >= RESTART_PAGES && pages - caught_up_at >= CHECKPOINT_PAGES {
            caught_up_at = pages;
            let done = pool.with_writer(|conn| conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(backend));
            if let Err(e) = done {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
        if pages - asked_at >= CHECKPOINT_PAGES {
            asked_at = pages;
            // Full means a request is already pending: nothing to add.
            if let Err(TrySendError::Disconnected(())) = checkpointer.try_send(()) {
                tracing::error!("the checkpoint thread has stopped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    fn writer() -> (tempfile::TempDir, Arc<Pool>, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)").unwrap();
        let checkpointer = Connection::open(dir.path().join("w.db")).unwrap();
        let pool = Arc::new(Pool::new(conn, Vec::new(), std::time::Duration::from_secs(20)));
        let writer = Writer::start(Arc::clone(&pool), checkpointer).unwrap();
        (dir, pool, writer)
    }

    fn count(pool: &Pool) -> i64 {
        pool.with_writer(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).map_err(backend)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_or_panicking_write_leaves_its_batch_mates_committed() {
        let (_dir, pool, writer) = writer();
        let writer = Arc::new(writer);
        let mut tasks = Vec::new();
        for n in 0..200i64 {
            let writer = Arc::clone(&writer);
            tasks.push(tokio::spawn(async move {
                writer
                    .write(move |tx| {
                        tx.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(backend)?;
                        match n % 10 {
                            // Fails after writing: its row must not stay.
                            3 => Err(StoreError::Contract("test")),
                            7 => panic!("boom"),
                            _ => Ok(n),
                        }
                    })
                    .await
            }));
        }
        let mut ok = 0;
        for (n, task) in tasks.into_iter().enumerate() {
            match (n % 10, task.await.unwrap()) {
                (3, Err(StoreError::Contract("test"))) | (7, Err(StoreError::Backend(_))) => {}
                (_, Ok(got)) => {
                    assert_eq!(got, n as i64);
                    ok += 1;
                }
                (_, other) => panic!("write {n}: {other:?}"),
            }
        }
        assert_eq!(ok, 160);
        assert_eq!(count(&pool), 160);
        writer.stop().unwrap().join().unwrap();
        assert!(matches!(writer.write(|_| Ok(())).await, Err(StoreError::Backend(_))), "no writes after stop");
    }

    /// Another connection (another process) holds the write lock: every
    /// write of the batch that cannot begin is answered with that
    /// conflict, which the API turns into 503 with Retry-After, and writes
    /// go through again once the lock is released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_cannot_begin_answers_each_write_with_why() {
        let (dir, pool, writer) = writer();
        let writer = Arc::new(writer);
        let other = Connection::open(dir.path().join("w.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (n) VALUES (-1);").unwrap();
        let mut tasks = Vec::new();
        for n in 0..20i64 {
            let writer = Arc::clone(&writer);
            tasks.push(tokio::spawn(async move {
                writer.write(move |tx| tx.execute("INSERT INTO t (n) VALUES (?1)", [n]).map(drop).map_err(backend)).await
            }));
        }
        for task in tasks {
            let got = task.await.unwrap();
            assert!(matches!(got, Err(StoreError::Conflict(_))), "{got:?}");
        }
        other.execute_batch("ROLLBACK").unwrap();
        writer.write(|tx| tx.execute("INSERT INTO t (n) VALUES (100)", []).map(drop).map_err(backend)).await.unwrap();
        assert_eq!(count(&pool), 1);
        writer.stop().unwrap().join().unwrap();
    }
}
