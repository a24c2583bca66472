//! The outbound transaction sender (server-server API, "Transactions"):
//! every event a local user sends in a room with members on other servers,
//! and every EDU that must arrive (to-device messages, device-list and
//! cross-signing updates), reaches those servers in
//! `PUT /_matrix/federation/v1/send/{txnId}` transactions, in order, and
//! nothing acknowledged is lost across restarts of either side.
//!
//! The events table is the PDU queue ([`FederationStore`]): per
//! destination, a persisted `sent_pos` moves only after the destination
//! answered 200 to a transaction holding its events up to there. EDUs wait
//! in a persisted per-destination outbox ([`FederationSender::queue_edus`]
//! commits them before the client's request returns) and leave it in the
//! same store transaction that moves `sent_pos`, after the 200; they ride
//! with the destination's PDUs (at most [`MAX_PDUS_PER_TRANSACTION`] PDUs
//! and [`MAX_EDUS_PER_TRANSACTION`] EDUs a transaction), so backoff and
//! "retry when the peer is back" are shared. A destination's decisions
//! (what to read next, when to retry, which transaction id) are a sans-I/O
//! state machine, [`DestinationState`], with the time passed in;
//! [`FederationSender::run`] does the reads, sends and writes around it.
//! Typing and receipts are ephemeral and go apart, unpersisted (`edus.rs`).
//!
//! Invariants: a destination has at most one transaction in flight, and a
//! retried transaction is the same one (same id, same PDUs and EDUs: the
//! receiver deduplicates by origin and id, and to-device messages by
//! origin and message id); a destination's events are sent in stream
//! order and its EDUs in queue order; at most
//! [`MAX_CONCURRENT_FEDERATION_SENDS`] destinations are read for or sent
//! to at once, at most [`MAX_FEDERATION_DESTINATIONS`] are known.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chancery_proto::limits::{
    FEDERATION_RETRY_INITIAL_MS, FEDERATION_RETRY_MAX_MS, MAX_CONCURRENT_FEDERATION_SENDS, MAX_EDU_OUTBOX_AGE_MS,
    MAX_EDU_OUTBOX_PER_DESTINATION, MAX_EDUS_PER_TRANSACTION, MAX_FEDERATION_DESTINATIONS, MAX_PDUS_PER_TRANSACTION,
    MAX_TRANSACTION_EDU_BYTES,
};
use chancery_proto::ruma::api::federation::transactions::send_transaction_message;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName, UInt};
use chancery_store::{EduOutboxLimits, FederationStore, NewOutboundEdu, OutboundEdu, OutgoingPdu, StoreError};
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

/// The bounds of the persisted EDU outbox.
const EDU_OUTBOX_LIMITS: EduOutboxLimits =
    EduOutboxLimits { max_per_destination: MAX_EDU_OUTBOX_PER_DESTINATION, max_age_ms: MAX_EDU_OUTBOX_AGE_MS };

/// One transaction: its id and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub txn_id: String,
    pub pdus: Vec<OutgoingPdu>,
    /// Outbox EDUs, in queue order; they leave the outbox once the
    /// transaction is acknowledged.
    pub edus: Vec<OutboundEdu>,
    /// Once acknowledged, the destination has every event meant for it up
    /// to this position (the read covered positions past the last PDU
    /// that held nothing for it).
    pub through: u64,
}

/// What a destination needs done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read its events at positions `after < p <= upto` (at most
    /// [`MAX_PDUS_PER_TRANSACTION`]; none if `after == upto`) and, if
    /// `edus`, its oldest outbox EDUs (at most
    /// [`MAX_EDUS_PER_TRANSACTION`]), then call [`DestinationState::on_read`].
    Read { after: u64, upto: u64, edus: bool },
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
    /// Its outbox may hold EDUs no read has seen yet.
    edus_waiting: bool,
    /// The read in flight reads the outbox.
    reading_edus: bool,
}

impl DestinationState {
    /// A destination whose events are acknowledged through `sent_pos`.
    pub fn new(sent_pos: u64) -> Self {
        Self {
            cursor: sent_pos,
            upto: sent_pos,
            pending: None,
            busy: false,
            failures: 0,
            retry_at: None,
            edus_waiting: false,
            reading_edus: false,
        }
    }

    /// EDUs were queued in its outbox (committed): a read after the one
    /// in flight, if any, picks them up.
    pub fn on_edus_queued(&mut self) {
        self.edus_waiting = true;
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
            None if self.cursor < self.upto || self.edus_waiting => {
                // EDUs queued from here on are not seen by this read.
                self.reading_edus = std::mem::take(&mut self.edus_waiting);
                Step::Read { after: self.cursor, upto: self.upto, edus: self.reading_edus }
            }
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

    /// The read of `after < p <= upto` found `pdus` (at most `limit`)
    /// and the outbox `edus` (at most [`MAX_EDUS_PER_TRANSACTION`]);
    /// `txn_id` names the transaction they make (called only if they
    /// make one).
    pub fn on_read(
        &mut self,
        pdus: Vec<OutgoingPdu>,
        edus: Vec<OutboundEdu>,
        upto: u64,
        limit: usize,
        txn_id: impl FnOnce() -> String,
    ) {
        self.busy = false;
        self.reading_edus = false;
        // A full read may have left EDUs out, and so may the byte budget:
        // read the outbox again after this transaction.
        let edus_read = edus.len();
        let edus = fit_edus(edus, MAX_EDUS_PER_TRANSACTION, MAX_TRANSACTION_EDU_BYTES);
        if edus_read >= MAX_EDUS_PER_TRANSACTION || edus.len() < edus_read {
            self.edus_waiting = true;
        }
        // A full read may have left events out: the next read starts
        // after the last one it gave.
        let through = match pdus.last() {
            Some(last) if pdus.len() >= limit => last.stream_pos,
            _ => upto.max(self.cursor),
        };
        if pdus.is_empty() && edus.is_empty() {
            self.cursor = through;
            return;
        }
        self.pending = Some(Batch { txn_id: txn_id(), pdus, edus, through });
    }

    /// The read failed (the store): try again a little later.
    pub fn on_read_failed(&mut self, now_ms: u64) {
        self.busy = false;
        self.edus_waiting |= std::mem::take(&mut self.reading_edus);
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

/// The first of `edus` (in queue order) that one transaction carries: at
/// most `max_count`, and within `max_bytes` of JSON, except that the
/// first always goes (an EDU larger than the budget would otherwise
/// never leave).
pub fn fit_edus(mut edus: Vec<OutboundEdu>, max_count: usize, max_bytes: usize) -> Vec<OutboundEdu> {
    let mut bytes = 0usize;
    let mut keep = 0;
    for edu in edus.iter().take(max_count) {
        bytes = bytes.saturating_add(edu.json.len());
        if keep > 0 && bytes > max_bytes {
            break;
        }
        keep += 1;
    }
    edus.truncate(keep);
    edus
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
    /// Servers EDUs were queued for since the loop last looked (bounded;
    /// past it the periodic look at the outbox finds them).
    edus_queued: Mutex<BTreeSet<OwnedServerName>>,
    /// Transaction ids are `<start ms>.<n>`: unique across restarts.
    txn_prefix: u64,
    txn_seq: AtomicU64,
}

/// How one step ended.
enum Outcome {
    Read { pdus: Vec<OutgoingPdu>, edus: Vec<OutboundEdu>, upto: u64 },
    ReadFailed,
    Sent { txn_id: String },
    Failed,
}

impl FederationSender {
    pub fn new(deps: FederationSenderDeps) -> Self {
        let txn_prefix = deps.clock.now_ms();
        Self {
            deps,
            back: Mutex::new(BTreeSet::new()),
            edus_queued: Mutex::new(BTreeSet::new()),
            txn_prefix,
            txn_seq: AtomicU64::new(0),
        }
    }

    /// Queues EDUs that must arrive (destination, the whole EDU) in the
    /// persisted outbox, in one store transaction: once this returns they
    /// are committed and go in the destinations' next transactions, after
    /// a restart too. Past a destination's bound its oldest EDUs are
    /// dropped (logged, without content).
    pub async fn queue_edus(&self, edus: &[(OwnedServerName, serde_json::Value)]) -> Result<(), StoreError> {
        let edus: Vec<(OwnedServerName, serde_json::Value)> =
            edus.iter().filter(|(server, _)| *server != self.deps.server_name).cloned().collect();
        if edus.is_empty() {
            return Ok(());
        }
        let rows: Vec<NewOutboundEdu> =
            edus.iter().map(|(server, edu)| NewOutboundEdu { destination: server.to_string(), json: edu.to_string() }).collect();
        let dropped = self.deps.store.queue_federation_edus(&rows, self.deps.clock.now_ms(), EDU_OUTBOX_LIMITS).await?;
        for (server, count) in dropped {
            tracing::warn!(server = %server, dropped = count, "federation EDU outbox full: its oldest EDUs were dropped");
        }
        let mut queued = self.edus_queued.lock().expect("edus-queued lock");
        for (server, _) in edus {
            if queued.len() < MAX_FEDERATION_DESTINATIONS {
                queued.insert(server);
            }
        }
        drop(queued);
        self.deps.wake.notify_one();
        Ok(())
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
        // The outbox is looked at whole on start-up (EDUs queued before a
        // restart) and then now and then (EDUs another node queued).
        let mut outbox_looked_at: Option<u64> = None;
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
            let mut with_edus: Vec<OwnedServerName> =
                std::mem::take(&mut *self.edus_queued.lock().expect("edus-queued lock")).into_iter().collect();
            if outbox_looked_at.is_none_or(|at| now.saturating_sub(at) >= SWEEP_MS) {
                match self.deps.store.federation_edu_destinations(MAX_FEDERATION_DESTINATIONS).await {
                    Ok(found) => {
                        outbox_looked_at = Some(now);
                        with_edus.extend(found.iter().filter_map(|s| ServerName::parse(s).ok()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "federation sender: reading the EDU outbox failed");
                        outbox_looked_at = Some(now.saturating_sub(SWEEP_MS).saturating_add(STORE_RETRY_MS));
                    }
                }
            }
            for server in with_edus {
                if server == self.deps.server_name {
                    continue;
                }
                if !states.contains_key(&server) && states.len() >= MAX_FEDERATION_DESTINATIONS {
                    tracing::warn!(server = %server, "federation sender: too many destinations; EDUs for this one wait");
                    continue;
                }
                // A destination known only by its EDUs: its events are
                // looked for from where discovery stands (the earlier ones
                // would have made it a destination).
                states.entry(server).or_insert_with(|| DestinationState::new(scanned)).on_edus_queued();
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
                Step::Read { after, upto, edus } => match read_step(&*store, &origin, &server, after, upto, edus, now_ms).await {
                    Ok((pdus, edus)) => Outcome::Read { pdus, edus, upto },
                    Err(e) => {
                        tracing::warn!(server = %server, error = %e, "federation sender: reading a destination's events failed");
                        Outcome::ReadFailed
                    }
                },
                Step::Send(batch) => send_batch(&*store, &federation, origin, &server, batch, now_ms).await,
            };
            (server, outcome)
        });
    }

    fn apply(&self, state: &mut DestinationState, outcome: Outcome) {
        let now = self.deps.clock.now_ms();
        match outcome {
            Outcome::Read { pdus, edus, upto } => {
                state.on_read(pdus, edus, upto, MAX_PDUS_PER_TRANSACTION, || self.next_txn_id());
            }
            Outcome::ReadFailed => state.on_read_failed(now),
            Outcome::Sent { txn_id } => {
                state.on_sent(&txn_id);
            }
            Outcome::Failed => state.on_failed(now),
        }
    }
}

/// One read step: the destination's events `after < p <= upto` and, if
/// asked, its oldest outbox EDUs (expired ones dropped, logged).
async fn read_step(
    store: &dyn FederationStore,
    origin: &ServerName,
    server: &ServerName,
    after: u64,
    upto: u64,
    edus: bool,
    now_ms: u64,
) -> Result<(Vec<OutgoingPdu>, Vec<OutboundEdu>), StoreError> {
    let pdus = if after < upto {
        store.federation_events_for(origin.as_str(), server.as_str(), after, upto, MAX_PDUS_PER_TRANSACTION).await?
    } else {
        Vec::new()
    };
    let edus = if edus {
        let queued = store.federation_edus_for(server.as_str(), now_ms, EDU_OUTBOX_LIMITS, MAX_EDUS_PER_TRANSACTION).await?;
        if queued.expired > 0 {
            tracing::warn!(server = %server, dropped = queued.expired, "federation EDUs waited too long for their server; dropped");
        }
        queued.edus
    } else {
        Vec::new()
    };
    Ok((pdus, edus))
}

/// Sends one transaction and, on the destination's 200, persists its new
/// position and drops its EDUs from the outbox. A destination the policy
/// does not permit gets nothing: its events and EDUs are passed over as
/// if sent.
async fn send_batch(
    store: &dyn FederationStore,
    federation: &Federation,
    origin: OwnedServerName,
    server: &ServerName,
    batch: Batch,
    now_ms: u64,
) -> Outcome {
    let pdus: Result<Vec<Box<RawJsonValue>>, _> = batch.pdus.iter().map(|p| RawJsonValue::from_string(p.json.clone())).collect();
    let edus: Result<Vec<Raw<_>>, _> =
        batch.edus.iter().map(|e| RawJsonValue::from_string(e.json.clone()).map(Raw::from_json)).collect();
    let answer = match pdus.and_then(|pdus| edus.map(|edus| (pdus, edus))) {
        Ok((pdus, edus)) => {
            let mut request = send_transaction_message::v1::Request::new(
                OwnedTransactionId::from(batch.txn_id.as_str()),
                origin,
                MilliSecondsSinceUnixEpoch(UInt::new_saturating(now_ms)),
            );
            request.pdus = pdus;
            request.edus = edus;
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
    let edu_ids: Vec<u64> = batch.edus.iter().map(|e| e.id).collect();
    if let Err(e) = store.federation_transaction_acknowledged(server.as_str(), batch.through, &edu_ids).await {
        // Sent all the same: after a restart the events and EDUs go
        // again, which the destination tells apart by their ids.
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
        assert_eq!(d.next_step(0), Some(Step::Read { after: 10, upto: 12, edus: false }));
        assert_eq!(d.next_step(0), None, "one step at a time");
        assert_eq!(d.next_retry_at(), None);
    }

    #[test]
    fn an_empty_read_moves_the_cursor_and_sends_nothing() {
        let mut d = DestinationState::new(0);
        d.on_wake(100);
        assert_eq!(d.next_step(0), Some(Step::Read { after: 0, upto: 100, edus: false }));
        d.on_read(Vec::new(), Vec::new(), 100, MAX_PDUS_PER_TRANSACTION, || unreachable!("no transaction for nothing"));
        assert_eq!(d.next_step(0), None);
        assert_eq!(d.next_batch(0), None);
        d.on_wake(101);
        assert_eq!(d.next_step(0), Some(Step::Read { after: 100, upto: 101, edus: false }));
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
            d.on_read(pdus(read.clone()), Vec::new(), *upto, limit, || "t1".into());
            let batch = d.next_batch(0).expect("a transaction");
            assert_eq!(batch.pdus.len(), read.clone().count());
            assert!(batch.pdus.len() <= limit);
            assert_eq!(batch.through, *next, "{read:?} up to {upto}");
            assert_eq!(d.on_sent("t1"), Some(*next));
            d.on_wake(*upto + 1);
            assert_eq!(d.next_step(0), Some(Step::Read { after: *next, upto: *upto + 1, edus: false }), "{read:?}");
        }
    }

    #[test]
    fn a_failed_transaction_is_retried_whole_after_a_growing_backoff() {
        let mut d = DestinationState::new(0);
        d.on_wake(3);
        d.next_step(0);
        d.on_read(pdus(1..=3), Vec::new(), 3, 50, || "t1".into());
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
        assert_eq!(d.next_step(4_000), Some(Step::Read { after: 3, upto: 10, edus: false }));
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
        d.on_read(pdus(1..=1), Vec::new(), 1, 50, || "t1".into());
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
        assert_eq!(d.next_step(100 + READ_RETRY_MS), Some(Step::Read { after: 0, upto: 5, edus: false }));
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

    fn edu(id: u64, bytes: usize) -> OutboundEdu {
        OutboundEdu { id, json: "x".repeat(bytes) }
    }

    fn edus(ids: std::ops::RangeInclusive<u64>) -> Vec<OutboundEdu> {
        ids.map(|id| edu(id, 10)).collect()
    }

    #[test]
    fn queued_edus_make_a_read_of_the_outbox() {
        let mut d = DestinationState::new(5);
        d.on_edus_queued();
        assert_eq!(d.next_step(0), Some(Step::Read { after: 5, upto: 5, edus: true }));
        d.on_read(Vec::new(), edus(1..=2), 5, 50, || "t1".into());
        let batch = d.next_batch(0).expect("EDUs alone make a transaction");
        assert_eq!((batch.pdus.len(), batch.edus.len(), batch.through), (0, 2, 5));
        assert_eq!(d.on_sent("t1"), Some(5));
        assert_eq!(d.next_step(0), None, "the outbox was read whole");
        // Events and EDUs ride together; the outbox is read only when told.
        d.on_wake(8);
        assert_eq!(d.next_step(0), Some(Step::Read { after: 5, upto: 8, edus: false }));
        d.on_read(pdus(6..=7), Vec::new(), 8, 50, || "t2".into());
        d.on_edus_queued();
        d.next_batch(0).unwrap();
        assert_eq!(d.on_sent("t2"), Some(8));
        assert_eq!(d.next_step(0), Some(Step::Read { after: 8, upto: 8, edus: true }));
        d.on_read(Vec::new(), Vec::new(), 8, 50, || unreachable!("nothing to send"));
        assert_eq!(d.next_step(0), None);
    }

    #[test]
    fn edus_queued_during_a_read_get_a_read_of_their_own() {
        let mut d = DestinationState::new(0);
        d.on_edus_queued();
        assert!(matches!(d.next_step(0), Some(Step::Read { edus: true, .. })));
        d.on_edus_queued(); // committed after the read began: it may miss them
        d.on_read(Vec::new(), edus(1..=1), 0, 50, || "t1".into());
        d.next_batch(0).unwrap();
        d.on_sent("t1");
        assert_eq!(d.next_step(0), Some(Step::Read { after: 0, upto: 0, edus: true }));
        // A failed read of the outbox reads it again after the wait.
        d.on_read_failed(10);
        assert_eq!(d.next_step(10), None);
        assert_eq!(d.next_step(10 + READ_RETRY_MS), Some(Step::Read { after: 0, upto: 0, edus: true }));
    }

    #[test]
    fn a_transaction_holds_at_most_a_hundred_edus_within_a_byte_budget() {
        assert_eq!(MAX_EDUS_PER_TRANSACTION, 100);
        // (EDUs read, their sizes) → (EDUs carried, outbox read again)
        let full: Vec<OutboundEdu> = edus(1..=100);
        let big: Vec<OutboundEdu> = (1..=3).map(|id| edu(id, MAX_TRANSACTION_EDU_BYTES / 2)).collect();
        let huge: Vec<OutboundEdu> = vec![edu(1, MAX_TRANSACTION_EDU_BYTES + 1), edu(2, 1)];
        let cases: Vec<(Vec<OutboundEdu>, usize, bool)> =
            vec![(edus(1..=99), 99, false), (full, 100, true), (big, 2, true), (huge, 1, true)];
        for (read, carried, again) in cases {
            let mut d = DestinationState::new(0);
            d.on_edus_queued();
            d.next_step(0);
            d.on_read(Vec::new(), read, 0, 50, || "t".into());
            let batch = d.next_batch(0).unwrap();
            assert_eq!(batch.edus.len(), carried);
            assert!(batch.edus.windows(2).all(|w| w[0].id < w[1].id), "in queue order");
            d.on_sent("t");
            assert_eq!(d.next_step(0).is_some(), again, "{carried}");
        }
        assert_eq!(fit_edus(edus(1..=5), 3, usize::MAX).len(), 3);
        assert_eq!(fit_edus(edus(1..=5), 10, 25).len(), 2);
        assert_eq!(fit_edus(Vec::new(), 10, 25).len(), 0);
    }

    #[test]
    fn edus_share_the_backoff_and_the_peers_return() {
        let mut d = DestinationState::new(0);
        d.on_edus_queued();
        d.next_step(0);
        d.on_read(Vec::new(), edus(1..=2), 0, 50, || "t1".into());
        let first = d.next_batch(0).unwrap();
        d.on_failed(0);
        d.on_failed(0);
        // More EDUs meanwhile wait for the waiting transaction to go.
        d.on_edus_queued();
        assert_eq!(d.next_step(100), None, "backing off");
        d.peer_is_back();
        let again = d.next_batch(100).expect("retried at once");
        assert_eq!(again, first, "same id, same EDUs");
        assert_eq!(d.on_sent("t1"), Some(0));
        assert_eq!(d.next_step(100), Some(Step::Read { after: 0, upto: 0, edus: true }));
    }
}
