//! The outbound transaction sender (server-server API, "Transactions"):
//! every event a local user sends in a room with members on other servers
//! reaches those servers in `PUT /_matrix/federation/v1/send/{txnId}`
//! transactions, in order, and nothing acknowledged is lost across
//! restarts of either side.
//!
//! The events table is the queue ([`FederationStore`]): per destination, a
//! persisted `sent_pos` moves only after the destination answered 200 to a
//! transaction holding its events up to there. A destination's decisions
//! (what to read next, when to retry, which transaction id) are a sans-I/O
//! state machine, [`DestinationState`], with the time passed in;
//! [`FederationSender::run`] does the reads, sends and writes around it.
//!
//! Invariants: a destination has at most one transaction in flight, and a
//! retried transaction is the same one (same id, same PDUs: the receiver
//! deduplicates by origin and id); a destination's events are sent in
//! stream order; at most [`MAX_CONCURRENT_FEDERATION_SENDS`] destinations
//! are read for or sent to at once, at most
//! [`MAX_FEDERATION_DESTINATIONS`] are known.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chancery_proto::limits::{
    FEDERATION_RETRY_INITIAL_MS, FEDERATION_RETRY_MAX_MS, MAX_CONCURRENT_FEDERATION_SENDS, MAX_FEDERATION_DESTINATIONS,
    MAX_PDUS_PER_TRANSACTION,
};
use chancery_proto::ruma::api::federation::transactions::send_transaction_message;
use chancery_proto::ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName, UInt};
use chancery_store::{FederationStore, OutgoingPdu, StoreError};
use serde_json::value::RawValue as RawJsonValue;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::{Federation, FederationError};
use crate::clock::Clock;

/// How long a destination waits after its events could not be read.
const READ_RETRY_MS: u64 = 5_000;
/// How long the sender waits after the store failed it (discovery).
const STORE_RETRY_MS: u64 = 5_000;
/// The longest the sender sleeps without a wake-up (a commit on another
/// node sharing the database wakes nobody here).
const SWEEP_MS: u64 = 60_000;
/// Discovery's position is written when it moved this far since it was
/// last written (and always with new destinations): a restart rescans at
/// most this much.
const SCAN_PERSIST_EVERY: u64 = 10_000;
/// How long shutdown waits for transactions in flight.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// One transaction: its id and what it carries. Only PDUs for now; EDUs
/// (typing, receipts, device lists) will join them here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub txn_id: String,
    pub pdus: Vec<OutgoingPdu>,
    /// Once acknowledged, the destination has every event meant for it up
    /// to this position (the read covered positions past the last PDU
    /// that held nothing for it).
    pub through: u64,
}

/// What a destination needs done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read its events at positions `after < p <= upto` (at most
    /// [`MAX_PDUS_PER_TRANSACTION`]), then call [`DestinationState::on_read`].
    Read { after: u64, upto: u64 },
    /// Send this transaction, then call [`DestinationState::on_sent`] or
    /// [`DestinationState::on_failed`].
    Send(Batch),
}

/// One destination's queue, sans I/O: where it stands, the transaction
/// waiting to go (kept whole until acknowledged), its backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationState {
    /// Every event meant for it up to here was acknowledged or found not
    /// to be for it (in memory; the store holds the acknowledged part).
    cursor: u64,
    /// The highest committed position the sender knows of.
    upto: u64,
    pending: Option<Batch>,
    /// A read or a send is in flight.
    busy: bool,
    failures: u32,
    retry_at: Option<u64>,
}

impl DestinationState {
    /// A destination whose events are acknowledged through `sent_pos`.
    pub fn new(sent_pos: u64) -> Self {
        Self { cursor: sent_pos, upto: sent_pos, pending: None, busy: false, failures: 0, retry_at: None }
    }

    /// Events are committed through `upto`.
    pub fn on_wake(&mut self, upto: u64) {
        self.upto = self.upto.max(upto);
    }

    /// What to do now, if anything: nothing while a step is in flight or
    /// a retry is not due; the waiting transaction before any new read.
    pub fn next_step(&mut self, now_ms: u64) -> Option<Step> {
        if self.busy || self.retry_at.is_some_and(|at| at > now_ms) {
            return None;
        }
        self.retry_at = None;
        let step = match &self.pending {
            Some(batch) => Step::Send(batch.clone()),
            None if self.cursor < self.upto => Step::Read { after: self.cursor, upto: self.upto },
            None => return None,
        };
        self.busy = true;
        Some(step)
    }

    /// The transaction to send now, if that is the next step (a read
    /// step stays undone: see [`Self::next_step`]).
    pub fn next_batch(&mut self, now_ms: u64) -> Option<Batch> {
        self.pending.as_ref()?;
        match self.next_step(now_ms) {
            Some(Step::Send(batch)) => Some(batch),
            _ => None,
        }
    }

    /// The read of `after < p <= upto` found `pdus` (at most `limit`);
    /// `txn_id` names the transaction they make (called only if they
    /// make one).
    pub fn on_read(&mut self, pdus: Vec<OutgoingPdu>, upto: u64, limit: usize, txn_id: impl FnOnce() -> String) {
        self.busy = false;
        let Some(last) = pdus.last() else {
            self.cursor = self.cursor.max(upto);
            return;
        };
        // A full read may have left events out: the next read starts
        // after the last one it gave.
        let through = if pdus.len() >= limit { last.stream_pos } else { upto };
        self.pending = Some(Batch { txn_id: txn_id(), pdus, through });
    }

    /// The read failed (the store): try again a little later.
    pub fn on_read_failed(&mut self, now_ms: u64) {
        self.busy = false;
        self.retry_at = Some(now_ms + READ_RETRY_MS);
    }

    /// The destination acknowledged `txn_id`. Returns the position to
    /// persist as its `sent_pos` (`None` for an answer to another
    /// transaction than the waiting one).
    pub fn on_sent(&mut self, txn_id: &str) -> Option<u64> {
        if self.pending.as_ref().is_none_or(|b| b.txn_id != txn_id) {
            return None;
        }
        let batch = self.pending.take()?;
        self.busy = false;
        self.failures = 0;
        self.retry_at = None;
        self.cursor = self.cursor.max(batch.through);
        Some(self.cursor)
    }

    /// The transaction failed (unreachable, an error answer): it is sent
    /// again, the same, after the backoff.
    pub fn on_failed(&mut self, now_ms: u64) {
        self.busy = false;
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now_ms + retry_delay_ms(self.failures));
    }

    /// The destination just contacted us: whatever waits for it is tried
    /// at once, and its backoff starts over.
    pub fn peer_is_back(&mut self) {
        if self.retry_at.is_some() {
            self.retry_at = None;
            self.failures = 0;
        }
    }

    /// When a step waiting on its backoff becomes due.
    pub fn next_retry_at(&self) -> Option<u64> {
        if self.busy { None } else { self.retry_at }
    }

    /// Transactions failed in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The wait after `failures` failures in a row (at least one): the
/// initial delay doubled each time, capped.
pub fn retry_delay_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(32);
    FEDERATION_RETRY_INITIAL_MS.saturating_mul(1 << doublings).min(FEDERATION_RETRY_MAX_MS)
}

/// Where discovery of new destinations starts on start-up: where it was
/// persisted, or (the first start) the committed position, so history from
/// before federation ran is not sent.
pub fn discovery_start(persisted_scanned_pos: Option<u64>, committed_pos: u64) -> u64 {
    persisted_scanned_pos.unwrap_or(committed_pos)
}

/// The `sent_pos` of a destination first seen at `first_pos` (the
/// membership change that made it one): that change is its first event.
pub fn start_position(first_pos: u64) -> u64 {
    first_pos.saturating_sub(1)
}

/// What [`FederationSender`] is built from.
pub struct FederationSenderDeps {
    pub store: Arc<dyn FederationStore>,
    pub federation: Arc<Federation>,
    pub server_name: OwnedServerName,
    pub clock: Arc<dyn Clock>,
    /// Notified at each commit of an event.
    pub wake: Arc<Notify>,
}

/// The outbound transaction sender: one task per node ([`Self::run`]).
pub struct FederationSender {
    deps: FederationSenderDeps,
    /// Servers that contacted us since the loop last looked (bounded).
    back: Mutex<BTreeSet<OwnedServerName>>,
    /// Transaction ids are `<start ms>.<n>`: unique across restarts.
    txn_prefix: u64,
    txn_seq: AtomicU64,
}

/// How one step ended.
enum Outcome {
    Read { pdus: Vec<OutgoingPdu>, upto: u64 },
    ReadFailed,
    Sent { txn_id: String },
    Failed,
}

impl FederationSender {
    pub fn new(deps: FederationSenderDeps) -> Self {
        let txn_prefix = deps.clock.now_ms();
        Self { deps, back: Mutex::new(BTreeSet::new()), txn_prefix, txn_seq: AtomicU64::new(0) }
    }

    /// `server` just contacted us (an authenticated inbound request): what
    /// waits for it is retried now instead of after its backoff.
    pub fn peer_is_back(&self, server: &ServerName) {
        let mut back = self.back.lock().expect("peers-back lock");
        if back.len() < MAX_FEDERATION_DESTINATIONS {
            back.insert(server.to_owned());
        }
        drop(back);
        self.deps.wake.notify_one();
    }

    fn next_txn_id(&self) -> String {
        format!("{}.{}", self.txn_prefix, self.txn_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends transactions until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let Some((mut states, mut scanned, mut scanned_persisted)) = self.load(&mut shutdown).await else {
            return;
        };
        let mut tasks: JoinSet<(OwnedServerName, Outcome)> = JoinSet::new();
        // Where the last round of starts stopped, so every destination
        // gets its turn when more than the concurrency limit are ready.
        let mut last_started: Option<OwnedServerName> = None;
        let mut woken = true;
        let mut store_retry_at: Option<u64> = None;
        while !*shutdown.borrow() {
            let now = self.deps.clock.now_ms();
            if woken && store_retry_at.is_none_or(|at| at <= now) {
                woken = false;
                store_retry_at = None;
                match self.discover(&mut states, &mut scanned, &mut scanned_persisted).await {
                    Ok(upto) => states.values_mut().for_each(|s| s.on_wake(upto)),
                    Err(e) => {
                        tracing::warn!(error = %e, "federation sender: reading new events failed; trying again shortly");
                        woken = true;
                        store_retry_at = Some(now + STORE_RETRY_MS);
                    }
                }
            }
            let back = std::mem::take(&mut *self.back.lock().expect("peers-back lock"));
            for server in back {
                if let Some(state) = states.get_mut(&server) {
                    state.peer_is_back();
                }
            }

            let now = self.deps.clock.now_ms();
            let order: Vec<OwnedServerName> = match &last_started {
                Some(last) => states
                    .range::<OwnedServerName, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                    .chain(states.range::<OwnedServerName, _>(..=last))
                    .map(|(k, _)| k.clone())
                    .collect(),
                None => states.keys().cloned().collect(),
            };
            for server in order {
                if tasks.len() >= MAX_CONCURRENT_FEDERATION_SENDS {
                    break;
                }
                let Some(state) = states.get_mut(&server) else { continue };
                if let Some(step) = state.next_step(now) {
                    self.spawn_step(&mut tasks, server.clone(), step);
                    last_started = Some(server);
                }
            }

            let next_at = states.values().filter_map(DestinationState::next_retry_at).chain(store_retry_at).min();
            let wait_ms = next_at.map_or(SWEEP_MS, |t| t.saturating_sub(now)).clamp(1, SWEEP_MS);
            tokio::select! {
                stopping = shutdown.changed() => {
                    if stopping.is_err() {
                        break;
                    }
                }
                () = self.deps.wake.notified() => woken = true,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                    Ok((server, outcome)) => {
                        if let Some(state) = states.get_mut(&server) {
                            self.apply(state, outcome);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "a federation send task failed"),
                },
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => woken = true,
            }
        }
        if tokio::time::timeout(SHUTDOWN_WAIT, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            tasks.abort_all();
        }
    }

    /// The persisted destinations and where discovery starts (its
    /// position, and the one persisted), retried until it works or the
    /// server stops.
    async fn load(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<(BTreeMap<OwnedServerName, DestinationState>, u64, u64)> {
        loop {
            match self.try_load().await {
                Ok(loaded) => return Some(loaded),
                Err(e) => tracing::warn!(error = %e, "federation sender: reading its state failed; trying again shortly"),
            }
            tokio::select! {
                stopping = shutdown.changed() => {
                    if stopping.is_err() || *shutdown.borrow() {
                        return None;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(STORE_RETRY_MS)) => {}
            }
        }
    }

    async fn try_load(&self) -> Result<(BTreeMap<OwnedServerName, DestinationState>, u64, u64), StoreError> {
        let persisted = self.deps.store.federation_sender_state(MAX_FEDERATION_DESTINATIONS).await?;
        let scanned = match persisted.scanned_pos {
            Some(pos) => pos,
            None => {
                let start = discovery_start(None, self.deps.store.federation_stream_pos().await?);
                self.deps.store.add_federation_destinations(&[], start).await?;
                start
            }
        };
        let mut states = BTreeMap::new();
        for (server, sent_pos) in persisted.destinations {
            match ServerName::parse(&server) {
                Ok(name) if name != self.deps.server_name => {
                    states.insert(name, DestinationState::new(sent_pos));
                }
                _ => tracing::warn!(server = %server, "federation sender: a stored destination is not a server name; skipped"),
            }
        }
        Ok((states, scanned, scanned))
    }

    /// Finds the destinations that membership changes since the last
    /// look made, gives them a queue (persisted with the discovery
    /// position); returns the committed position.
    async fn discover(
        &self,
        states: &mut BTreeMap<OwnedServerName, DestinationState>,
        scanned: &mut u64,
        scanned_persisted: &mut u64,
    ) -> Result<u64, StoreError> {
        let store = &self.deps.store;
        let upto = store.federation_stream_pos().await?;
        if upto <= *scanned {
            return Ok(upto);
        }
        let found = store
            .new_federation_destinations(self.deps.server_name.as_str(), *scanned, upto, MAX_FEDERATION_DESTINATIONS)
            .await?;
        let mut fresh = Vec::new();
        for (server, first_pos) in found {
            let Ok(name) = ServerName::parse(&server) else { continue };
            if states.contains_key(&name) || name == self.deps.server_name {
                continue;
            }
            if states.len() + fresh.len() >= MAX_FEDERATION_DESTINATIONS {
                tracing::warn!(server = %server, "federation sender: too many destinations; this one is left out");
                continue;
            }
            fresh.push((name, start_position(first_pos)));
        }
        if !fresh.is_empty() || upto - *scanned_persisted >= SCAN_PERSIST_EVERY {
            let rows: Vec<(String, u64)> = fresh.iter().map(|(name, pos)| (name.to_string(), *pos)).collect();
            store.add_federation_destinations(&rows, upto).await?;
            *scanned_persisted = upto;
        }
        for (name, pos) in fresh {
            states.insert(name, DestinationState::new(pos));
        }
        *scanned = upto;
        Ok(upto)
    }

    fn spawn_step(&self, tasks: &mut JoinSet<(OwnedServerName, Outcome)>, server: OwnedServerName, step: Step) {
        let store = self.deps.store.clone();
        let federation = self.deps.federation.clone();
        let origin = self.deps.server_name.clone();
        let now_ms = self.deps.clock.now_ms();
        tasks.spawn(async move {
            let outcome = match step {
                Step::Read { after, upto } => {
                    match store.federation_events_for(origin.as_str(), server.as_str(), after, upto, MAX_PDUS_PER_TRANSACTION).await {
                        Ok(pdus) => Outcome::Read { pdus, upto },
                        Err(e) => {
                            tracing::warn!(server = %server, error = %e, "federation sender: reading a destination's events failed");
                            Outcome::ReadFailed
                        }
                    }
                }
                Step::Send(batch) => send_batch(&*store, &federation, origin, &server, batch, now_ms).await,
            };
            (server, outcome)
        });
    }

    fn apply(&self, state: &mut DestinationState, outcome: Outcome) {
        let now = self.deps.clock.now_ms();
        match outcome {
            Outcome::Read { pdus, upto } => state.on_read(pdus, upto, MAX_PDUS_PER_TRANSACTION, || self.next_txn_id()),
            Outcome::ReadFailed => state.on_read_failed(now),
            Outcome::Sent { txn_id } => {
                state.on_sent(&txn_id);
            }
            Outcome::Failed => state.on_failed(now),
        }
    }
}

/// Sends one transaction and, on the destination's 200, persists its new
/// position. A destination the policy does not permit gets nothing: its
/// events are passed over as if sent.
async fn send_batch(
    store: &dyn FederationStore,
    federation: &Federation,
    origin: OwnedServerName,
    server: &ServerName,
    batch: Batch,
    now_ms: u64,
) -> Outcome {
    let pdus: Result<Vec<Box<RawJsonValue>>, _> = batch.pdus.iter().map(|p| RawJsonValue::from_string(p.json.clone())).collect();
    let answer = match pdus {
        Ok(pdus) => {
            let mut request = send_transaction_message::v1::Request::new(
                OwnedTransactionId::from(batch.txn_id.as_str()),
                origin,
                MilliSecondsSinceUnixEpoch(UInt::new_saturating(now_ms)),
            );
            request.pdus = pdus;
            federation.send(server, request).await
        }
        Err(e) => Err(FederationError::Build(e.to_string())),
    };
    match answer {
        Ok(response) => {
            for (event_id, result) in &response.pdus {
                if let Err(reason) = result {
                    tracing::info!(server = %server, event_id = %event_id, reason = %reason, "a destination refused an event");
                }
            }
        }
        Err(FederationError::NotPermitted(_)) => {
            tracing::debug!(server = %server, "federation sender: not a permitted destination; its events are passed over");
        }
        Err(e) => {
            tracing::info!(server = %server, txn_id = %batch.txn_id, error = %e, "a transaction failed; it will be retried");
            return Outcome::Failed;
        }
    }
    if let Err(e) = store.set_federation_sent_pos(server.as_str(), batch.through).await {
        // Sent all the same: after a restart the events go again, which
        // the destination tells apart by their ids.
        tracing::warn!(server = %server, error = %e, "federation sender: persisting a destination's position failed");
    }
    Outcome::Sent { txn_id: batch.txn_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(pos: u64) -> OutgoingPdu {
        OutgoingPdu { stream_pos: pos, event_id: format!("$e{pos}"), json: "{}".into() }
    }

    fn pdus(positions: std::ops::RangeInclusive<u64>) -> Vec<OutgoingPdu> {
        positions.map(pdu).collect()
    }

    #[test]
    fn nothing_to_do_until_events_are_committed() {
        let mut d = DestinationState::new(10);
        assert_eq!(d.next_step(0), None);
        d.on_wake(9);
        assert_eq!(d.next_step(0), None, "an older position changes nothing");
        d.on_wake(12);
        assert_eq!(d.next_step(0), Some(Step::Read { after: 10, upto: 12 }));
        assert_eq!(d.next_step(0), None, "one step at a time");
        assert_eq!(d.next_retry_at(), None);
    }

    #[test]
    fn an_empty_read_moves_the_cursor_and_sends_nothing() {
        let mut d = DestinationState::new(0);
        d.on_wake(100);
        assert_eq!(d.next_step(0), Some(Step::Read { after: 0, upto: 100 }));
        d.on_read(Vec::new(), 100, MAX_PDUS_PER_TRANSACTION, || unreachable!("no transaction for nothing"));
        assert_eq!(d.next_step(0), None);
        assert_eq!(d.next_batch(0), None);
        d.on_wake(101);
        assert_eq!(d.next_step(0), Some(Step::Read { after: 100, upto: 101 }));
    }

    #[test]
    fn batches_hold_at_most_fifty_and_a_full_one_continues_after_its_last() {
        let limit = MAX_PDUS_PER_TRANSACTION;
        assert_eq!(limit, 50);
        // (events read, read up to) → (next read's start once acknowledged)
        let cases: &[(std::ops::RangeInclusive<u64>, u64, u64)] = &[
            (1..=50, 200, 50),  // full: the read may have left events out
            (1..=49, 200, 200), // not full: everything up to 200 was seen
            (7..=7, 8, 8),
        ];
        for (read, upto, next) in cases {
            let mut d = DestinationState::new(0);
            d.on_wake(*upto);
            assert!(matches!(d.next_step(0), Some(Step::Read { .. })));
            d.on_read(pdus(read.clone()), *upto, limit, || "t1".into());
            let batch = d.next_batch(0).expect("a transaction");
            assert_eq!(batch.pdus.len(), read.clone().count());
            assert!(batch.pdus.len() <= limit);
            assert_eq!(batch.through, *next, "{read:?} up to {upto}");
            assert_eq!(d.on_sent("t1"), Some(*next));
            d.on_wake(*upto + 1);
            assert_eq!(d.next_step(0), Some(Step::Read { after: *next, upto: *upto + 1 }), "{read:?}");
        }
    }

    #[test]
    fn a_failed_transaction_is_retried_whole_after_a_growing_backoff() {
        let mut d = DestinationState::new(0);
        d.on_wake(3);
        d.next_step(0);
        d.on_read(pdus(1..=3), 3, 50, || "t1".into());
        let first = d.next_batch(1_000).unwrap();
        d.on_failed(1_000);
        assert_eq!(d.failures(), 1);
        assert_eq!(d.next_retry_at(), Some(2_000));
        assert_eq!(d.next_step(1_999), None, "not before the backoff");
        // More events meanwhile do not change the waiting transaction.
        d.on_wake(10);
        let again = d.next_batch(2_000).expect("due");
        assert_eq!(again, first, "same id, same PDUs");
        d.on_failed(2_000);
        assert_eq!(d.next_retry_at(), Some(4_000));
        // A stale answer (another id) acknowledges nothing.
        assert_eq!(d.on_sent("t0"), None);
        let third = d.next_batch(4_000).unwrap();
        assert_eq!(third.txn_id, "t1");
        assert_eq!(d.on_sent("t1"), Some(3));
        assert_eq!((d.failures(), d.next_retry_at()), (0, None));
        assert_eq!(d.next_step(4_000), Some(Step::Read { after: 3, upto: 10 }));
    }

    #[test]
    fn backoff_doubles_from_a_second_to_an_hour() {
        let cases = [
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (10, 512_000),
            (12, 2_048_000),
            (13, 3_600_000),
            (40, 3_600_000),
            (u32::MAX, 3_600_000),
        ];
        for (failures, delay) in cases {
            assert_eq!(retry_delay_ms(failures), delay, "{failures}");
        }
    }

    #[test]
    fn a_peer_that_comes_back_is_retried_at_once() {
        let mut d = DestinationState::new(0);
        d.on_wake(1);
        d.next_step(0);
        d.on_read(pdus(1..=1), 1, 50, || "t1".into());
        for n in 0..12 {
            d.next_batch(u64::MAX / 2).unwrap();
            d.on_failed(n);
        }
        assert!(d.next_retry_at().unwrap() > 1_000_000);
        assert_eq!(d.next_batch(100), None);
        d.peer_is_back();
        assert_eq!(d.next_retry_at(), None);
        assert_eq!(d.next_batch(100).map(|b| b.txn_id), Some("t1".into()));
        // Its backoff starts over.
        d.on_failed(100);
        assert_eq!(d.next_retry_at(), Some(1_100));
        // Coming back while a send is in flight changes nothing.
        let mut busy = DestinationState::new(0);
        busy.on_wake(1);
        busy.next_step(0);
        busy.peer_is_back();
        assert_eq!(busy.next_step(0), None);
    }

    #[test]
    fn a_failed_read_waits_a_little_without_counting_as_a_failure() {
        let mut d = DestinationState::new(0);
        d.on_wake(5);
        d.next_step(0);
        d.on_read_failed(100);
        assert_eq!(d.failures(), 0);
        assert_eq!(d.next_retry_at(), Some(100 + READ_RETRY_MS));
        assert_eq!(d.next_step(100), None);
        assert_eq!(d.next_step(100 + READ_RETRY_MS), Some(Step::Read { after: 0, upto: 5 }));
    }

    #[test]
    fn new_destinations_start_at_the_change_that_made_them() {
        // (persisted discovery position, committed position) → start.
        assert_eq!(discovery_start(None, 0), 0);
        assert_eq!(discovery_start(None, 500), 500, "first start: no history");
        assert_eq!(discovery_start(Some(120), 500), 120, "after a restart: rescan what may not be known");
        // A destination first seen at position p gets p itself (the
        // invite that made it one).
        assert_eq!(start_position(42), 41);
        assert_eq!(start_position(1), 0);
        assert_eq!(start_position(0), 0);
    }
}
