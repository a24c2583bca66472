//! Events built in a row ([`Builder`]) and the stored form of a built
//! event ([`new_event`]).

use chancery_core::pdu::{self, EventDraft, Pdu};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};
use chancery_store::{NewEvent, NewNotification, TxnKey};
use serde_json::Value as JsonValue;

use super::ServerIdentity;
use crate::Error;
use crate::clock::Clock;
use crate::rooms::StateMap;

/// Builds state events one after the other, each on the one before,
/// checking each against the state so far exactly as a later event would
/// be: a new room's first events, or (upgrades) events of an existing room
/// started from its current state and extremities.
pub(crate) struct Builder<'a> {
    pub(super) identity: &'a ServerIdentity,
    pub(super) clock: &'a dyn Clock,
    pub(super) rules: RoomVersionRules,
    /// `None` until the create event of a room whose id derives from it.
    pub(super) room_id: Option<OwnedRoomId>,
    /// The state the next event is checked against.
    pub(super) state: StateMap,
    pub(super) prev: Vec<OwnedEventId>,
    pub(super) depth: u64,
    pub(super) events: Vec<NewEvent>,
    /// No event is stamped earlier than this (milliseconds since the epoch).
    pub(super) not_before_ms: u64,
}

impl Builder<'_> {
    /// The room's id: given, or (room version 12) derived from its create
    /// event once that is pushed.
    pub(crate) fn room_id(&self) -> Option<&OwnedRoomId> {
        self.room_id.as_ref()
    }

    /// Stamps the events built from now on no earlier than `ts_ms`.
    pub(crate) fn not_before(mut self, ts_ms: u64) -> Self {
        self.not_before_ms = ts_ms;
        self
    }

    /// The events built so far, taken out.
    pub(crate) fn take_events(&mut self) -> Vec<NewEvent> {
        std::mem::take(&mut self.events)
    }

    /// On error (e.g. the auth rules refuse it) nothing is added.
    pub(crate) fn push(
        &mut self,
        sender: &OwnedUserId,
        event_type: &str,
        state_key: &str,
        content: JsonValue,
    ) -> Result<(), Error> {
        let draft = EventDraft {
            room_id: self.room_id.clone(),
            sender: sender.clone(),
            event_type: event_type.to_owned(),
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
        };
        super::refuse_nul(&draft)?;
        let auth_events: Vec<OwnedEventId> =
            pdu::auth_types(&draft, &self.rules)?.iter().filter_map(|k| self.state.get(k)).map(|p| p.event_id.clone()).collect();
        let depth = self.depth + 1;
        let built = pdu::build_pdu(
            &draft,
            &self.rules,
            &self.prev,
            &auth_events,
            depth,
            self.clock.now_ms().max(self.not_before_ms),
            &self.identity.server_name,
            &self.identity.signing_key,
        )?;
        pdu::authorize(&self.rules, &built, &self.state)?;
        self.depth = depth;
        let room_id = match &self.room_id {
            Some(room_id) => room_id.clone(),
            None => self.room_id.insert(built.room_id_or_derived()?).clone(),
        };
        self.events.push(new_event(&built, &room_id, None, Vec::new()));
        self.prev = vec![built.event_id.clone()];
        self.state.insert((StateEventType::from(event_type), state_key.to_owned()), built);
        Ok(())
    }
}

/// What the store keeps of a built event.
pub(crate) fn new_event(pdu: &Pdu, room_id: &RoomId, txn: Option<TxnKey>, notifications: Vec<NewNotification>) -> NewEvent {
    let membership = (pdu.event_type.to_string() == "m.room.member")
        .then(|| pdu.content_json().get("membership").and_then(|m| m.as_str()).map(MembershipState::from))
        .flatten();
    NewEvent {
        event_id: pdu.event_id.to_string(),
        room_id: room_id.to_string(),
        event_type: pdu.event_type.to_string(),
        state_key: pdu.state_key.clone(),
        sender: pdu.sender.to_string(),
        origin_server_ts: pdu.origin_server_ts.get().into(),
        depth: pdu.depth.into(),
        json: pdu.json.clone(),
        membership,
        redacts: pdu.redacts_target().map(|e| e.to_string()),
        txn,
        search_text: search_text(pdu),
        notifications,
        // Set by the writer once the relation has been checked.
        relates_to: None,
    }
}

/// The text server-side search indexes (spec `/search` keys). Encrypted
/// events have none of these fields, so they are never indexed.
fn search_text(pdu: &Pdu) -> Vec<(String, String)> {
    let field = match pdu.event_type.to_string().as_str() {
        "m.room.message" => "body",
        "m.room.name" => "name",
        "m.room.topic" => "topic",
        _ => return Vec::new(),
    };
    let content = pdu.content_json();
    match content.get(field).and_then(|v| v.as_str()) {
        Some(text) if !text.is_empty() => vec![(format!("content.{field}"), text.to_owned())],
        _ => Vec::new(),
    }
}
