//! Rooms: creating them, sending events (messages, state, memberships,
//! redactions) and reading them back as a client sees them.
//!
//! Write path: one room's events are built and persisted in order under a
//! per-room lock; different rooms never wait on each other. The store
//! rejects an append whose `prev_events` are stale (another node went
//! first), and the event is rebuilt on the new extremities.

mod aliases;
mod client_event;
mod context;
mod create;
pub(crate) mod filter;
mod forget;
mod knock;
mod membership;
mod public_rooms;
pub(crate) mod read;
mod relations;
mod reports;
mod send;
mod upgrade;
mod visibility;

use chancery_proto::ruma::events::room::member::MembershipState;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chancery_core::pdu::{Pdu, PduError};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource};
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::{RoomId, RoomVersionId, UserId};

pub use client_event::ClientEventOptions;
pub use context::ContextPage;
pub use create::{CreateRoom, Preset};
pub use membership::MembershipAction;
pub use public_rooms::PublicRoomsRequest;
pub use read::{Direction, MessagesPage, format_token, parse_token};
pub use relations::{RelationsPage, RelationsRequest, ThreadsPage};
pub use upgrade::UpgradeRoom;

use crate::{Error, Services};

/// Room versions this server creates and joins.
pub const SUPPORTED_ROOM_VERSIONS: &[RoomVersionId] = &[RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// The version a client or operator asked for, if this server supports it.
pub fn supported_room_version(requested: &str) -> Option<RoomVersionId> {
    SUPPORTED_ROOM_VERSIONS.iter().find(|v| v.as_str() == requested).cloned()
}

pub(crate) type StateMap = BTreeMap<(StateEventType, String), Pdu>;

/// Per-node runtime of rooms: the write locks.
pub(crate) struct RoomRuntime {
    locks: Mutex<HashMap<String, Arc<RoomWriter>>>,
}

/// One room's writes on this node.
#[derive(Default)]
pub(crate) struct RoomWriter {
    /// Held while an event is built and queued (and, for events that are
    /// not pipelined, until it is committed).
    pub(crate) lock: tokio::sync::Mutex<()>,
    /// The last event queued and not yet known to be committed, when the
    /// store commits queued appends in order: the next event is built on
    /// it instead of waiting for its commit.
    pub(crate) pending: Mutex<Option<PendingAppend>>,
    /// The room's version once read (it never changes).
    pub(crate) room_version: std::sync::OnceLock<RoomVersionId>,
}

#[derive(Clone)]
pub(crate) struct PendingAppend {
    pub(crate) event_id: String,
    pub(crate) depth: u64,
    /// Turns true once its write is settled (committed or failed); closed
    /// if the request that queued it was dropped.
    pub(crate) settled: tokio::sync::watch::Receiver<bool>,
}

impl RoomWriter {
    pub(crate) fn pending(&self) -> Option<PendingAppend> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_pending(&self, pending: Option<PendingAppend>) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = pending;
    }

    /// Waits until the pending event (if any) is settled, so that what the
    /// store holds is the room's newest state. The caller holds `lock`, so
    /// nothing new is queued meanwhile; earlier pending events were queued
    /// before the last one and are settled with it.
    pub(crate) async fn drain(&self) {
        if let Some(pending) = self.pending() {
            let mut settled = pending.settled.clone();
            let _ = settled.wait_for(|done| *done).await;
            self.settle(&pending.event_id);
        }
    }

    /// Forgets `event_id` if it is still the pending one (it was committed,
    /// or failed).
    pub(crate) fn settle(&self, event_id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.as_ref().is_some_and(|p| p.event_id == event_id) {
            *pending = None;
        }
    }
}

/// Idle per-room locks are dropped once this many are held.
const MAX_IDLE_ROOM_LOCKS: usize = 10_000;

impl RoomRuntime {
    pub(crate) fn new() -> Self {
        Self { locks: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn lock_for(&self, room_id: &RoomId) -> Arc<RoomWriter> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() >= MAX_IDLE_ROOM_LOCKS {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        Arc::clone(locks.entry(room_id.to_string()).or_default())
    }
}

impl Services {
    /// Wakes the syncs an event written to `room_id` concerns: the room's,
    /// and for a membership event its target's (who may not be waiting on
    /// the room yet: an invite, a join from elsewhere).
    pub(crate) fn wake_for_event(&self, room_id: &str, member_target: Option<&str>) {
        if let Some(after) = self.inner.wakeups.event(room_id, member_target) {
            after();
        }
    }
}

pub(crate) fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules, Error> {
    version.rules().ok_or_else(|| Error::Internal(format!("no rules for room version {version}")))
}

/// The power levels in force, with v12 room creators' unlimited power.
pub(crate) fn power_levels(state: &StateMap, rules: &RoomVersionRules) -> Result<RoomPowerLevels, Error> {
    let mut creators = Vec::new();
    if rules.authorization.explicitly_privilege_room_creators
        && let Some(create) = state.get(&(StateEventType::RoomCreate, String::new()))
    {
        creators.push(create.sender.clone());
        if let Some(extra) = create.content_json().get("additional_creators").and_then(|a| a.as_array()) {
            creators.extend(extra.iter().filter_map(|u| u.as_str()).filter_map(|u| UserId::parse(u).ok()));
        }
    }
    let source = match state.get(&(StateEventType::RoomPowerLevels, String::new())) {
        Some(pdu) => RoomPowerLevelsSource::Original(
            serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get())
                .map_err(|e| Error::Internal(format!("stored power levels: {e}")))?,
        ),
        None => RoomPowerLevelsSource::None,
    };
    Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
}

impl From<PduError> for Error {
    fn from(e: PduError) -> Self {
        match e {
            PduError::TooLarge => Error::TooLarge(e.to_string()),
            PduError::Invalid(m) => Error::BadJson(m),
            PduError::Forbidden(m) => Error::Forbidden(m),
        }
    }
}

impl Services {
    /// The room's whole current state, parsed (room upgrades copy it).
    pub(crate) async fn current_state(&self, room_id: &RoomId) -> Result<StateMap, Error> {
        let events = self.store().state_at(room_id.as_str(), None).await?;
        let mut state = StateMap::new();
        for e in events {
            let pdu = Pdu::from_json(&e.event_id, &e.json)?;
            state.insert((StateEventType::from(e.event_type.as_str()), e.state_key.unwrap_or_default()), pdu);
        }
        Ok(state)
    }

    /// The current state events of the given keys (those that exist).
    pub(crate) async fn state_subset(&self, room_id: &RoomId, keys: &[(StateEventType, String)]) -> Result<StateMap, Error> {
        let mut wanted: Vec<(String, String)> = keys.iter().map(|(t, k)| (t.to_string(), k.clone())).collect();
        wanted.sort();
        wanted.dedup();
        let mut state = StateMap::new();
        for chunk in wanted.chunks(chancery_store::MAX_STATE_KEYS_PER_READ) {
            for e in self.store().current_state_events(room_id.as_str(), chunk).await? {
                let key = (StateEventType::from(e.event_type.as_str()), e.state_key.clone().unwrap_or_default());
                state.insert(key, Pdu::from_json(&e.event_id, &e.json)?);
            }
        }
        Ok(state)
    }

    /// The user's current membership in the room (`None`: never a member).
    pub(crate) async fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipState>, Error> {
        Ok(self.store().state_event(room_id.as_str(), "m.room.member", user_id.as_str(), None).await?.and_then(|e| e.membership))
    }

    /// Errors unless the user is joined to the room. Rooms the server does
    /// not know answer the same as rooms the user is not in, so room ids
    /// cannot be probed.
    pub(crate) async fn ensure_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<(), Error> {
        match self.membership(room_id, user_id).await? {
            Some(MembershipState::Join) => Ok(()),
            _ => Err(Error::Forbidden("you are not joined to this room".into())),
        }
    }
}
