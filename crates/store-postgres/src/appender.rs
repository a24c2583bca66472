//! Group commit of appends on this node. Every `append_event` queues its
//! event; one task takes the events waiting at that moment (up to
//! [`MAX_BATCH`], across rooms) and persists them in one transaction, so
//! they share its round trips, its stream-lock window and its commit
//! (one WAL flush). A room's events in a batch form a chain, each built on
//! the one before (the service builds a room's next message on the one
//! being committed, as `RoomStore::append_event` allows).
//!
//! Each event is checked against its room's extremities as the batch
//! goes: one that does not fit (another node wrote to the room) is answered
//! `StaleExtremities` and left out, and so are the ones built on it.
//! If the transaction fails as a whole because of one of its events (a
//! used transaction id), the batch is split in halves, committed in order
//! ([`bisect`]), so one bad event costs about 2·log2(n) transactions
//! instead of one per event. A transaction given up for a concurrent one
//! (deadlock) is run again first ([`retry::conflicts`]); a fault of the
//! database (unreachable, disk full) is every event's answer, since
//! splitting cannot help.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use chancery_store::{EventListener, NewEvent, StoreError, StoreResult, retry};
use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};

use chancery_store_sql::i;

use crate::query::get;
use crate::rooms::{Step, Writes, persist_chains, pipeline};
use crate::{backend, pool_error};

/// Events committed together at most.
const MAX_BATCH: usize = 64;

struct Job {
    event: NewEvent,
    prev_extremities: Vec<String>,
    done: oneshot::Sender<StoreResult<u64>>,
}

pub(crate) struct Appender {
    jobs: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

fn closed() -> StoreError {
    StoreError::Backend("the database is closed".into())
}

impl Appender {
    /// Starts the task that commits the queued appends; `listener` is told
    /// of each committed event.
    pub(crate) fn start(pool: Pool, listener: Arc<OnceLock<EventListener>>) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, listener, queue));
        Self { jobs: Mutex::new(Some(jobs)) }
    }

    /// Queues the append (before the first await, so appends are committed
    /// in call order) and waits for its commit.
    pub(crate) async fn append(&self, event: NewEvent, prev_extremities: &[String]) -> StoreResult<u64> {
        let (done, result) = oneshot::channel();
        let job = Job { event, prev_extremities: prev_extremities.to_vec(), done };
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.as_ref().ok_or_else(closed)?.send(job).map_err(|_| closed())?;
        }
        result.await.map_err(|_| StoreError::Backend("the write was not carried out".into()))?
    }

    /// Refuses new appends; the task commits the queued ones and ends.
    pub(crate) fn stop(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

async fn run(pool: Pool, listener: Arc<OnceLock<EventListener>>, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (pool, batch_ref) = (&pool, &batch);
        let results = bisect(batch.len(), |range| {
            let part = &batch_ref[range];
            retry::conflicts(move || append_batch(pool, part))
        })
        .await;
        // The listener decides which syncs are woken before the caller and
        // which after: after every caller of the batch, so none waits
        // behind another's room. The caller may have gone; the write
        // stands either way.
        let mut afters = Vec::new();
        for (job, result) in batch.into_iter().zip(results) {
            if let (Ok(_), Some(listener)) = (&result, listener.get()) {
                afters.extend(listener(&job.event.room_id, job.event.member_target()));
            }
            let _ = job.done.send(result);
        }
        for after in afters {
            after();
        }
    }
}

/// An answer for each of `n` items, from `try_part`, which answers a
/// contiguous range of them in one transaction or fails as a whole. A part
/// that fails because of what it holds is split in halves, left before
/// right, so parts commit in queue order and one bad item among n costs
/// about 2·log2(n) tries (at most 2n - 1 however many are bad). A fault of
/// the database is the answer of the whole part: splitting it would only
/// repeat it.
pub(crate) async fn bisect<R, F>(n: usize, mut try_part: impl FnMut(Range<usize>) -> F) -> Vec<StoreResult<R>>
where
    F: Future<Output = StoreResult<Vec<StoreResult<R>>>>,
{
    let mut results: Vec<Option<StoreResult<R>>> = (0..n).map(|_| None).collect();
    // Ranges still to try, the next one on top.
    let mut pending = vec![(0, n)];
    while let Some((start, end)) = pending.pop() {
        if start >= end {
            continue;
        }
        match try_part(start..end).await {
            Ok(answers) if answers.len() == end - start => {
                for (slot, answer) in results[start..end].iter_mut().zip(answers) {
                    *slot = Some(answer);
                }
            }
            Ok(_) => {
                for slot in &mut results[start..end] {
                    *slot = Some(Err(StoreError::Contract("a batch answered another number of jobs")));
                }
            }
            Err(e) if end - start == 1 || is_fault(&e) => {
                for slot in &mut results[start..end] {
                    *slot = Some(Err(e.clone()));
                }
            }
            Err(_) => {
                let middle = start + (end - start) / 2;
                pending.push((middle, end));
                pending.push((start, middle));
            }
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Backend("no result".into())))).collect()
}

/// A failure of the database rather than of what a batch holds.
fn is_fault(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::Conflict(_) | StoreError::DiskFull)
}

/// Extremities of each room of a batch: `None` for a room not found.
type Extremities<'a> = BTreeMap<&'a str, Option<BTreeSet<String>>>;

/// One transaction for `jobs`: an answer per job, or the error that
/// failed the transaction as a whole. Four round trips however many events
/// and rooms the batch holds (and one more per room where nothing fits):
/// BEGIN, locking the rooms and taking their extremities (one pipeline),
/// writing the events that fit (another), and COMMIT.
async fn append_batch(pool: &Pool, jobs: &[Job]) -> StoreResult<Vec<StoreResult<u64>>> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let w = Writes::prepare(&client).await?;
    // The rooms in one order on every node, so two batches never wait for
    // each other's room locks in a cycle.
    let mut depths: BTreeMap<&str, i64> = BTreeMap::new();
    for job in jobs {
        let depth = depths.entry(job.event.room_id.as_str()).or_default();
        *depth = (*depth).max(i(job.event.depth));
    }
    let tx = client.transaction().await.map_err(backend)?;
    let taken = take_extremities(&tx, &w, &depths).await?;
    let (mut results, chains) = fit(jobs, &taken);
    if chains.is_empty() {
        tx.rollback().await.map_err(backend)?;
        return Ok(answers(results));
    }
    // Rooms where nothing fits get their extremities back.
    for (room, extremities) in &taken {
        if let Some(extremities) = extremities
            && !chains.contains_key(room)
        {
            for event_id in extremities {
                tx.execute(&w.add_extremity, &[room, event_id]).await.map_err(backend)?;
            }
        }
    }
    let events: Vec<Vec<&NewEvent>> = chains.values().map(|chain| chain.iter().map(|&k| &jobs[k].event).collect()).collect();
    let events: Vec<&[&NewEvent]> = events.iter().map(Vec::as_slice).collect();
    for (chain, positions) in chains.values().zip(persist_chains(&tx, &w, &events).await?) {
        for (&k, pos) in chain.iter().zip(positions) {
            results[k] = Some(Ok(pos));
        }
    }
    tx.commit().await.map_err(backend)?;
    Ok(answers(results))
}

/// Locks each room and takes its extremities, in one pipeline (each
/// DELETE runs after its lock wait, so it sees the previous writer's).
async fn take_extremities<'a>(tx: &Transaction<'_>, w: &Writes, depths: &BTreeMap<&'a str, i64>) -> StoreResult<Extremities<'a>> {
    let steps: Vec<Step<'_, Option<BTreeSet<String>>>> = depths
        .iter()
        .map(|(room, depth)| -> Step<'_, _> {
            Box::pin(async move {
                let (found, extremities) = tokio::join!(
                    biased;
                    async { tx.query_opt(&w.lock_room, &[room, depth]).await },
                    async { tx.query(&w.take_extremities, &[room]).await },
                );
                if found.map_err(backend)?.is_none() {
                    return Ok(None);
                }
                Ok(Some(extremities.map_err(backend)?.iter().map(|r| get::<String>(r, 0)).collect::<StoreResult<_>>()?))
            })
        })
        .collect();
    Ok(depths.keys().copied().zip(pipeline(steps).await?).collect())
}

/// Per job in queue order, its answer if it is refused (`None` if it fits).
type Refusals = Vec<Option<StoreResult<u64>>>;
/// Per room, the indices of the jobs that fit, in order.
type Chains<'a> = BTreeMap<&'a str, Vec<usize>>;

/// Which jobs fit, in queue order, given each room's extremities: each
/// accepted one becomes its room's only extremity for the next. The
/// answers of those that do not fit, and the chain of those that do, per
/// room.
fn fit<'a>(jobs: &'a [Job], extremities: &Extremities<'_>) -> (Refusals, Chains<'a>) {
    let mut results = Vec::with_capacity(jobs.len());
    let mut current = extremities.clone();
    let mut chains: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (k, job) in jobs.iter().enumerate() {
        let room = job.event.room_id.as_str();
        match current.get_mut(room) {
            Some(Some(extremities)) => {
                if *extremities == job.prev_extremities.iter().cloned().collect::<BTreeSet<_>>() {
                    *extremities = BTreeSet::from([job.event.event_id.clone()]);
                    chains.entry(room).or_default().push(k);
                    results.push(None);
                } else {
                    results.push(Some(Err(StoreError::StaleExtremities)));
                }
            }
            _ => results.push(Some(Err(StoreError::UnknownRoom))),
        }
    }
    (results, chains)
}

fn answers(results: Vec<Option<StoreResult<u64>>>) -> Vec<StoreResult<u64>> {
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Backend("no result".into())))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tries `bisect` makes over `n` items of which those in `bad` fail
    /// their part; checks every answer.
    async fn tries(n: usize, bad: &[usize], fault: Option<StoreError>) -> usize {
        let mut tries = 0;
        let answers = bisect(n, |part: Range<usize>| {
            tries += 1;
            let outcome = match &fault {
                Some(fault) => Err(fault.clone()),
                None if part.clone().any(|k| bad.contains(&k)) => Err(StoreError::TransactionIdUsed),
                None => Ok(part.map(|k| Ok(k as u64)).collect()),
            };
            async move { outcome }
        })
        .await;
        assert_eq!(answers.len(), n);
        for (k, answer) in answers.into_iter().enumerate() {
            match (&fault, answer) {
                (Some(_), Err(e)) => assert!(is_fault(&e), "{k}: {e:?}"),
                (None, Err(StoreError::TransactionIdUsed)) => assert!(bad.contains(&k), "{k} failed"),
                (None, Ok(pos)) => assert!(!bad.contains(&k) && pos == k as u64, "{k} committed"),
                (_, other) => panic!("{k}: {other:?}"),
            }
        }
        tries
    }

    #[tokio::test]
    async fn one_bad_job_costs_a_logarithmic_number_of_tries() {
        assert_eq!(tries(64, &[], None).await, 1);
        // One bad job of 64: the whole batch, then two halves per level
        // down to it (6 levels), never one transaction per job.
        for bad in [0, 31, 32, 63] {
            let n = tries(64, &[bad], None).await;
            assert!(n <= 1 + 2 * 6, "bad job {bad}: {n} tries");
        }
        assert_eq!(tries(1, &[0], None).await, 1);
        // Several bad jobs still cost at most 2n - 1 tries.
        assert!(tries(64, &[1, 20, 40, 41], None).await < 2 * 64);
        assert!(tries(7, &[0, 1, 2, 3, 4, 5, 6], None).await < 2 * 7);
        // A database fault is every job's answer at once.
        assert_eq!(tries(64, &[], Some(StoreError::Unavailable("down".into()))).await, 1);
        assert_eq!(tries(64, &[], Some(StoreError::DiskFull)).await, 1);
    }
}
