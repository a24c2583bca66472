//! The room writer: builds, authorises and persists events, one room at a
//! time. Every event of the server goes through here (or through a
//! [`Builder`] for the several events of a room creation or upgrade).
//!
//! In memory, per node: a lock per room (idle ones dropped past ten
//! thousand), the event of each room still being committed,
//! and each room's version once read. Another node's appends make the
//! store refuse ours (stale extremities) and the event is rebuilt.
//!
//! Sync wake-ups happen at commit, in the store's commit listener (the
//! [`Notifier`](crate::notifier::Notifier)), not here.

mod build;
mod locks;
mod relations;

use std::sync::Arc;
use std::task::Poll;

use chancery_core::pdu::{self, EventDraft};
use chancery_proto::limits::{MAX_APPEND_RETRIES, MAX_EVENT_TYPE_BYTES, MAX_STATE_KEY_BYTES};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::signatures::Ed25519KeyPair;
use chancery_proto::ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, UserId};
use chancery_store::{NewEvent, NewRelation, RelationStore, RoomInfo, RoomStore, StoreError, TxnKey};

pub(crate) use build::{Builder, new_event};
pub(crate) use locks::ExclusiveRoom;
use locks::{PendingAppend, RoomLocks, RoomWrites};
pub(crate) use relations::declared_relation;

use super::state::{ensure_joined, state_subset};
use super::{StateMap, rules_of};
use crate::Error;
use crate::clock::Clock;
use crate::nul::{refuse_nul_in_json, refuse_nul_in_param};
use crate::push::Push;

/// This server's name and the key it signs its events with (shared by the
/// nodes of one database through the key file).
pub struct ServerIdentity {
    pub server_name: OwnedServerName,
    pub signing_key: Ed25519KeyPair,
}

/// What [`RoomWriter`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct RoomWriterDeps {
    pub rooms: Arc<dyn RoomStore>,
    /// Whether a declared relation is valid (its parent, duplicates).
    pub relations: Arc<dyn RelationStore>,
    /// Who each event notifies, stored with it.
    pub push: Arc<Push>,
    /// Signs every event.
    pub identity: ServerIdentity,
    /// Events' `origin_server_ts`.
    pub clock: Arc<dyn Clock>,
}

/// The write path of every room.
pub struct RoomWriter {
    deps: RoomWriterDeps,
    locks: RoomLocks,
}

/// What the next event of a room is built on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuildBase {
    room_version: RoomVersionId,
    /// Its `prev_events`: the room's forward extremities, or the event
    /// still being committed.
    prev: Vec<String>,
    depth: u64,
}

/// An event built, authorised and ready to persist.
struct Built {
    event_id: OwnedEventId,
    event: NewEvent,
}

impl RoomWriter {
    pub fn new(deps: RoomWriterDeps) -> Self {
        Self { deps, locks: RoomLocks::default() }
    }

    /// Builds `draft` on the room's current extremities and state,
    /// authorises it and persists it. Returns the event id and position
    /// (0 when a retried transaction id answers with its first event).
    pub(crate) async fn append(
        &self,
        room_id: &RoomId,
        draft: EventDraft,
        txn: Option<TxnKey>,
    ) -> Result<(OwnedEventId, u64), Error> {
        self.append_checked(room_id, draft, txn, false).await
    }

    /// [`Self::append`] for a sender who must be joined to the room, checked
    /// on the state the event is authorised against (no read of its own).
    /// Rooms the server does not know answer as rooms the sender is not in.
    pub(crate) async fn append_as_member(
        &self,
        room_id: &RoomId,
        draft: EventDraft,
        txn: Option<TxnKey>,
    ) -> Result<(OwnedEventId, u64), Error> {
        self.append_checked(room_id, draft, txn, true).await
    }

    /// The room's lock, held until the returned guard is dropped, with no
    /// write of this node pending: for writes that replace the room's
    /// extremities in another store operation (upgrades).
    pub(crate) async fn exclusive(&self, room_id: &RoomId) -> ExclusiveRoom {
        self.locks.room(room_id).exclusive().await
    }

    /// A builder of several events in a row (a room's first events, an
    /// upgrade's), signed by this server.
    pub(crate) fn builder(
        &self,
        rules: RoomVersionRules,
        room_id: Option<OwnedRoomId>,
        state: StateMap,
        prev: Vec<OwnedEventId>,
        depth: u64,
    ) -> Builder<'_> {
        Builder {
            identity: &self.deps.identity,
            clock: &*self.deps.clock,
            rules,
            room_id,
            state,
            prev,
            depth,
            events: Vec::new(),
            not_before_ms: 0,
        }
    }

    /// Whether a received state event takes over its (type, state key):
    /// yes when the event in force is among its ancestors (it was built
    /// knowing it) or there is none; when the two are concurrent (a fork),
    /// the one state resolution v2 applies last wins: the later
    /// `origin_server_ts`, then the greater event id. Both servers of a
    /// fork so pick the same one. (The full algorithm also orders power
    /// events by power and by the power levels' mainline; not yet.)
    async fn wins_current_state(&self, room_id: &RoomId, pdu: &pdu::Pdu, extremities: &[String]) -> Result<bool, Error> {
        let key = (pdu.event_type.to_string(), pdu.state_key.clone().unwrap_or_default());
        let Some(current) = self.deps.rooms.current_state_events(room_id.as_str(), std::slice::from_ref(&key)).await?.pop()
        else {
            return Ok(true);
        };
        // Built on exactly the room's tips: it saw everything in force.
        let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
        let mut sorted_prev = prev.clone();
        sorted_prev.sort();
        let mut tips = extremities.to_vec();
        tips.sort();
        if sorted_prev == tips || self.is_ancestor(&current.event_id, current.stream_pos, &prev).await? {
            return Ok(true);
        }
        let theirs = (u64::from(pdu.origin_server_ts.get()), pdu.event_id.as_str());
        Ok(theirs > (current.origin_server_ts, current.event_id.as_str()))
    }

    /// Whether `candidate` (stored at `candidate_pos`) is an ancestor of
    /// events `from` (through `prev_events`). An event is stored after its
    /// ancestors, so the walk stops at events older than the candidate;
    /// past `MAX_ANCESTRY_WALK` events it answers yes (as before forks
    /// were looked at).
    async fn is_ancestor(&self, candidate: &str, candidate_pos: u64, from: &[String]) -> Result<bool, Error> {
        let mut todo: Vec<String> = from.to_vec();
        let mut seen = std::collections::HashSet::new();
        while let Some(id) = todo.pop() {
            if id == candidate {
                return Ok(true);
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            if seen.len() > chancery_proto::limits::MAX_ANCESTRY_WALK {
                return Ok(true);
            }
            if let Some(event) = self.deps.rooms.event(&id).await?
                && event.stream_pos > candidate_pos
            {
                #[derive(serde::Deserialize)]
                struct Prev {
                    #[serde(default)]
                    prev_events: Vec<String>,
                }
                todo.extend(serde_json::from_str::<Prev>(&event.json).map(|p| p.prev_events).unwrap_or_default());
            }
        }
        Ok(false)
    }

    /// Builds, signs and authorises `draft` on the room's current
    /// extremities and state without persisting it: an invite another
    /// server must countersign first (it comes back through
    /// [`Self::append_received`]).
    pub(crate) async fn build_unpersisted(&self, room_id: &RoomId, mut draft: EventDraft) -> Result<pdu::Pdu, Error> {
        refuse_nul(&draft)?;
        draft.room_id = Some(room_id.to_owned());
        let room = self.locks.room(room_id);
        let _guard = room.lock.lock().await;
        room.drain().await;
        let base = self.build_base(&room, room_id, false, true).await?;
        let built = self.build(room_id, &draft, &base, None, None, true).await?;
        Ok(pdu::Pdu::from_json(built.event_id.as_str(), &built.event.json)?)
    }

    /// Appends a membership event of one of this server's users to a room
    /// known only through invites (no create event here to check it
    /// against): the resident server checked it when it accepted it.
    pub(crate) async fn append_to_stub(&self, room_id: &RoomId, pdu: &pdu::Pdu) -> Result<u64, Error> {
        let room = self.locks.room(room_id);
        let _guard = room.lock.lock().await;
        room.drain().await;
        for _ in 0..MAX_APPEND_RETRIES {
            let info = self.deps.rooms.room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
            let event = new_event(pdu, room_id, None, Vec::new());
            match self.deps.rooms.append_event(event, &info.forward_extremities).await {
                Ok(pos) => return Ok(pos),
                Err(StoreError::StaleExtremities) => continue,
                Err(StoreError::EventIdTaken) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::LimitExceeded { retry_after_ms: 100 })
    }

    /// Appends an event another server built and signed (received in a
    /// transaction, or a `send_join`), checked first against the room
    /// version's auth rules with the room's current state (its cited auth
    /// events looked up by id when they are no longer current). The event
    /// keeps the `prev_events` it was signed with; the room's extremities
    /// become this event (the store's linear model). Returns its position,
    /// or 0 when the event was already stored.
    pub(crate) async fn append_received(&self, room_id: &RoomId, pdu: &pdu::Pdu) -> Result<u64, Error> {
        let room = self.locks.room(room_id);
        let _guard = room.lock.lock().await;
        room.drain().await;
        if self.deps.rooms.event(pdu.event_id.as_str()).await?.is_some() {
            return Ok(0);
        }
        let draft = EventDraft {
            room_id: Some(room_id.to_owned()),
            sender: pdu.sender.clone(),
            event_type: pdu.event_type.to_string(),
            state_key: pdu.state_key.clone(),
            content: pdu.content_json(),
            redacts: pdu.redacts_target(),
        };
        for _ in 0..MAX_APPEND_RETRIES {
            let info = self.deps.rooms.room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
            let rules = rules_of(&info.room_version)?;
            let mut keys = pdu::auth_types(&draft, &rules)?;
            keys.push((StateEventType::RoomCreate, String::new()));
            let state = state_subset(&*self.deps.rooms, room_id, &keys).await?;
            let mut cited = std::collections::BTreeMap::new();
            for id in &pdu.auth_events {
                if !state.values().any(|p| &p.event_id == id)
                    && let Some(stored) = self.deps.rooms.event(id.as_str()).await?
                {
                    cited.insert(id.clone(), pdu::Pdu::from_json(&stored.event_id, &stored.json)?);
                }
            }
            let by_id: std::collections::BTreeMap<&EventId, &pdu::Pdu> =
                state.values().map(|p| (p.event_id.as_ref(), p)).chain(cited.iter().map(|(id, p)| (id.as_ref(), p))).collect();
            pdu::authorize_with(&rules, pdu, |id| by_id.get(id).copied(), &state)?;
            let notifications = self.deps.push.evaluate(room_id, pdu, &rules, &state).await?;
            let mut event = new_event(pdu, room_id, None, notifications);
            // A state event that lost to a concurrent one already in force
            // is kept in the timeline but changes no state.
            if pdu.state_key.is_some() && !self.wins_current_state(room_id, pdu, &info.forward_extremities).await? {
                event.state_key = None;
            }
            // Another server's relation is recorded when it would be valid
            // here; an invalid one leaves the event unrelated, not lost.
            event.relates_to =
                relations::relation_to_record(&*self.deps.rooms, &*self.deps.relations, room_id, &draft).await.ok().flatten();
            match self.deps.rooms.append_event(event, &info.forward_extremities).await {
                Ok(pos) => return Ok(pos),
                Err(StoreError::StaleExtremities) => continue,
                Err(StoreError::EventIdTaken) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::LimitExceeded { retry_after_ms: 100 })
    }

    async fn append_checked(
        &self,
        room_id: &RoomId,
        mut draft: EventDraft,
        txn: Option<TxnKey>,
        must_be_joined: bool,
    ) -> Result<(OwnedEventId, u64), Error> {
        refuse_nul(&draft)?;
        draft.room_id = Some(room_id.to_owned());
        let room = self.locks.room(room_id);
        let mut guard = Some(room.lock.lock().await);
        if let Some(txn) = &txn
            && let Some(existing) = self.event_of_txn(txn, room_id).await?
        {
            return Ok((existing, 0));
        }
        // Under the lock: no other send of this node can record a relation
        // that would change the verdict (duplicate annotations).
        let relation = self.relation_of(room_id, &draft, must_be_joined).await?;
        let pipelined = is_pipelined(&draft, relation.as_ref());
        if !pipelined {
            room.drain().await;
        }
        for _ in 0..MAX_APPEND_RETRIES {
            if guard.is_none() {
                guard = Some(room.lock.lock().await);
                // The pending event this one was built on failed: start
                // again from what the store holds.
                room.drain().await;
            }
            let base = self.build_base(&room, room_id, pipelined, must_be_joined).await?;
            let built = self.build(room_id, &draft, &base, txn.clone(), relation.clone(), must_be_joined).await?;
            let result = if pipelined {
                self.persist_pipelined(&room, &mut guard, built.event, &base).await
            } else {
                self.deps.rooms.append_event(built.event, &base.prev).await
            };
            match result {
                // The store woke the syncs the event concerns at its commit.
                Ok(pos) => return Ok((built.event_id, pos)),
                Err(StoreError::StaleExtremities) => continue,
                Err(StoreError::TransactionIdUsed) => {
                    let txn = txn.as_ref().expect("only an append with a transaction id can reuse one");
                    let existing =
                        self.event_of_txn(txn, room_id).await?.ok_or_else(|| Error::Internal("txn vanished".into()))?;
                    return Ok((existing, 0));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::LimitExceeded { retry_after_ms: 100 })
    }

    /// The relation to record with the event, checked; the relation's
    /// parent is looked at before the event is built, so only members may
    /// learn what it says of the room's events.
    async fn relation_of(
        &self,
        room_id: &RoomId,
        draft: &EventDraft,
        must_be_joined: bool,
    ) -> Result<Option<NewRelation>, Error> {
        if must_be_joined && declared_relation(&draft.content).is_some() {
            ensure_joined(&*self.deps.rooms, room_id, &draft.sender).await?;
        }
        relations::relation_to_record(&*self.deps.rooms, &*self.deps.relations, room_id, draft).await
    }

    /// What the event is built on. The pending event first: once it is
    /// settled (and forgotten), the room read after this sees it committed.
    /// Built on a pending event, the room's version (which never changes)
    /// is all that is needed of the room: no read.
    async fn build_base(
        &self,
        room: &RoomWrites,
        room_id: &RoomId,
        pipelined: bool,
        must_be_joined: bool,
    ) -> Result<BuildBase, Error> {
        let pending = room.pending().filter(|_| pipelined);
        if let Some(base) = base_on_pending(pending.as_ref(), room.room_version.get()) {
            return Ok(base);
        }
        let info = self
            .deps
            .rooms
            .room(room_id.as_str())
            .await?
            .ok_or_else(|| if must_be_joined { not_joined() } else { Error::NotFound("unknown room".into()) })?;
        let _ = room.room_version.set(info.room_version.clone());
        Ok(base_on_room(pending, info))
    }

    /// Builds the PDU on `base`, signs it, and authorises it against the
    /// state the auth rules look at (only that state is read, so a send
    /// costs the same in a room of 5 or 50,000 members); then evaluates
    /// the members' push rules.
    async fn build(
        &self,
        room_id: &RoomId,
        draft: &EventDraft,
        base: &BuildBase,
        txn: Option<TxnKey>,
        relation: Option<NewRelation>,
        must_be_joined: bool,
    ) -> Result<Built, Error> {
        let rules = rules_of(&base.room_version)?;
        let auth_types = pdu::auth_types(draft, &rules)?;
        // The create event is always needed: v12 rooms do not list it in
        // auth_events, but the auth rules still read it.
        let mut keys = auth_types.clone();
        keys.push((StateEventType::RoomCreate, String::new()));
        let state = state_subset(&*self.deps.rooms, room_id, &keys).await?;
        // The sender's membership is among the auth state of every event.
        if must_be_joined && !sender_joined(&state, &draft.sender) {
            return Err(not_joined());
        }
        let auth_events: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|key| state.get(key)).map(|p| p.event_id.clone()).collect();
        let prev: Vec<OwnedEventId> = base
            .prev
            .iter()
            .map(|e| EventId::parse(e.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let built = pdu::build_pdu(
            draft,
            &rules,
            &prev,
            &auth_events,
            base.depth,
            self.deps.clock.now_ms(),
            &self.deps.identity.server_name,
            &self.deps.identity.signing_key,
        )?;
        pdu::authorize(&rules, &built, &state)?;
        let notifications = self.deps.push.evaluate(room_id, &built, &rules, &state).await?;
        let mut event = new_event(&built, room_id, txn, notifications);
        event.relates_to = relation;
        Ok(Built { event_id: built.event_id, event })
    }

    /// Queues the write, makes it the room's pending event and releases the
    /// room's lock before its commit, so the room's next event is built on
    /// it meanwhile and a busy room's messages share commits.
    async fn persist_pipelined(
        &self,
        room: &RoomWrites,
        guard: &mut Option<tokio::sync::MutexGuard<'_, ()>>,
        event: NewEvent,
        base: &BuildBase,
    ) -> Result<u64, StoreError> {
        let event_id = event.event_id.clone();
        let mut write = self.deps.rooms.append_event(event, &base.prev);
        // The first poll queues the write (`RoomStore::append_event`).
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        let (settled, settled_rx) = tokio::sync::watch::channel(false);
        room.set_pending(Some(PendingAppend { event_id: event_id.clone(), depth: base.depth, settled: settled_rx }));
        drop(guard.take());
        let result = match first {
            Poll::Ready(result) => result,
            Poll::Pending => write.await,
        };
        room.settle(&event_id);
        let _ = settled.send(true);
        result
    }

    /// The event a transaction id already made: a retried request answers
    /// with it. An id the device already used in another room is refused
    /// (clients make them unique per access token), rather than answered
    /// with that room's event.
    /// The event a transaction already sent to the room, if any (a retry
    /// is answered with it).
    pub(crate) async fn event_of_txn(&self, txn: &TxnKey, room_id: &RoomId) -> Result<Option<OwnedEventId>, Error> {
        let Some(existing) = self.deps.rooms.event_for_txn(txn).await? else { return Ok(None) };
        if self.deps.rooms.event(&existing).await?.is_some_and(|e| e.room_id != room_id.as_str()) {
            return Err(Error::InvalidParam("this transaction id was already used in another room".into()));
        }
        Ok(Some(EventId::parse(existing).map_err(|e| Error::Internal(e.to_string()))?))
    }
}

fn not_joined() -> Error {
    Error::Forbidden("you are not joined to this room".into())
}

/// Whether an event is pipelined: its lock released once its write is
/// queued, the room's next event built on it while it is committed. Only
/// events that change nothing the next one is checked against: no state,
/// no redaction, no recorded relation. The others wait for the pending
/// one and hold the lock until they are committed.
fn is_pipelined(draft: &EventDraft, relation: Option<&NewRelation>) -> bool {
    draft.state_key.is_none() && draft.redacts.is_none() && relation.is_none()
}

/// The base of an event built on the room's pending event, when the room's
/// version is known: no read of the room needed.
fn base_on_pending(pending: Option<&PendingAppend>, room_version: Option<&RoomVersionId>) -> Option<BuildBase> {
    match (pending, room_version) {
        (Some(pending), Some(version)) => {
            Some(BuildBase { room_version: version.clone(), prev: vec![pending.event_id.clone()], depth: pending.depth + 1 })
        }
        _ => None,
    }
}

/// The base of an event from what the store says of the room (and the
/// pending event, if any, which is newer than the store's extremities).
fn base_on_room(pending: Option<PendingAppend>, info: RoomInfo) -> BuildBase {
    match pending {
        Some(pending) => BuildBase { room_version: info.room_version, prev: vec![pending.event_id], depth: pending.depth + 1 },
        None => BuildBase { room_version: info.room_version, prev: info.forward_extremities, depth: info.max_depth + 1 },
    }
}

/// Whether the sender is joined according to the event's auth state.
fn sender_joined(state: &StateMap, sender: &UserId) -> bool {
    let member = state.get(&(StateEventType::RoomMember, sender.to_string()));
    member.and_then(|m| m.content_json().get("membership").and_then(|m| m.as_str()).map(MembershipState::from))
        == Some(MembershipState::Join)
}

/// Every event is stored, and read back, as JSON (see [`crate::nul`]):
/// its type, state key and content must hold no U+0000.
pub(super) fn refuse_nul(draft: &EventDraft) -> Result<(), Error> {
    refuse_nul_in_param(&draft.event_type, "the event type")?;
    if let Some(state_key) = &draft.state_key {
        refuse_nul_in_param(state_key, "the state key")?;
    }
    refuse_nul_in_json(&draft.content, "event content")
}

pub(crate) fn check_type_and_key(event_type: &str, state_key: Option<&str>) -> Result<(), Error> {
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(Error::InvalidParam(format!("event types are 1 to {MAX_EVENT_TYPE_BYTES} bytes")));
    }
    if state_key.is_some_and(|k| k.len() > MAX_STATE_KEY_BYTES) {
        return Err(Error::InvalidParam(format!("state keys are at most {MAX_STATE_KEY_BYTES} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chancery_core::pdu::Pdu;

    use super::*;

    fn member_pdu(user: &str, membership: &str) -> Pdu {
        let json = serde_json::json!({
            "type": "m.room.member", "state_key": user, "sender": user, "room_id": "!r:x",
            "content": { "membership": membership }, "origin_server_ts": 0, "depth": 1,
            "prev_events": [], "auth_events": [], "hashes": {"sha256": ""}, "signatures": {},
        });
        Pdu::from_json("$m", &json.to_string()).expect("a well-formed member event")
    }

    fn draft(state_key: Option<&str>, redacts: Option<&str>) -> EventDraft {
        EventDraft {
            room_id: None,
            sender: UserId::parse("@a:x").unwrap(),
            event_type: "m.room.message".into(),
            state_key: state_key.map(str::to_owned),
            content: serde_json::json!({}),
            redacts: redacts.map(|r| EventId::parse(r).unwrap()),
        }
    }

    #[test]
    fn only_events_that_change_nothing_checked_later_are_pipelined() {
        let relation = NewRelation { parent: "$p".into(), rel_type: "m.thread".into(), key: None };
        for (draft, relation, expected) in [
            (draft(None, None), None, true),
            (draft(Some(""), None), None, false),
            (draft(None, Some("$t")), None, false),
            (draft(None, None), Some(&relation), false),
        ] {
            assert_eq!(is_pipelined(&draft, relation), expected, "{draft:?} {relation:?}");
        }
    }

    #[test]
    fn the_base_is_the_pending_event_when_there_is_one() {
        let (_, settled) = tokio::sync::watch::channel(false);
        let pending = PendingAppend { event_id: "$pending".into(), depth: 7, settled };
        let v11 = RoomVersionId::V11;
        let on_pending = BuildBase { room_version: v11.clone(), prev: vec!["$pending".into()], depth: 8 };
        assert_eq!(base_on_pending(Some(&pending), Some(&v11)), Some(on_pending.clone()));
        assert_eq!(base_on_pending(Some(&pending), None), None, "the version must be read first");
        assert_eq!(base_on_pending(None, Some(&v11)), None, "nothing pending: the store knows the extremities");
        let info = RoomInfo {
            room_id: "!r:x".into(),
            room_version: v11.clone(),
            creator: "@a:x".into(),
            created_ts: 0,
            forward_extremities: vec!["$x".into(), "$y".into()],
            max_depth: 3,
        };
        assert_eq!(base_on_room(Some(pending), info.clone()), on_pending);
        assert_eq!(base_on_room(None, info), BuildBase { room_version: v11, prev: vec!["$x".into(), "$y".into()], depth: 4 });
    }

    #[test]
    fn senders_are_joined_only_by_a_join() {
        let alice = UserId::parse("@a:x").unwrap();
        let mut state = StateMap::new();
        assert!(!sender_joined(&state, &alice), "no member event");
        for (membership, joined) in [("invite", false), ("leave", false), ("join", true)] {
            state.insert((StateEventType::RoomMember, alice.to_string()), member_pdu(alice.as_str(), membership));
            assert_eq!(sender_joined(&state, &alice), joined, "{membership}");
        }
    }
}
