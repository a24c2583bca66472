//! Reads of a room's current state and membership that every room
//! component does the same way: plain functions over the store, holding
//! no state of their own.

use chancery_core::pdu::Pdu;
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{EventId, RoomId, UserId};
use chancery_store::{RoomStore, StoredEvent};

use super::StateMap;
use crate::Error;

/// The room's whole current state, parsed (room upgrades copy it).
pub(crate) async fn current_state(store: &dyn RoomStore, room_id: &RoomId) -> Result<StateMap, Error> {
    let events = store.state_at(room_id.as_str(), None).await?;
    let mut state = StateMap::new();
    for e in events {
        let pdu = Pdu::from_json(&e.event_id, &e.json)?;
        state.insert((StateEventType::from(e.event_type.as_str()), e.state_key.unwrap_or_default()), pdu);
    }
    Ok(state)
}

/// The current state events of the given keys (those that exist).
pub(crate) async fn state_subset(
    store: &dyn RoomStore,
    room_id: &RoomId,
    keys: &[(StateEventType, String)],
) -> Result<StateMap, Error> {
    let mut wanted: Vec<(String, String)> = keys.iter().map(|(t, k)| (t.to_string(), k.clone())).collect();
    wanted.sort();
    wanted.dedup();
    let mut state = StateMap::new();
    for chunk in wanted.chunks(chancery_store::MAX_STATE_KEYS_PER_READ) {
        for e in store.current_state_events(room_id.as_str(), chunk).await? {
            let key = (StateEventType::from(e.event_type.as_str()), e.state_key.clone().unwrap_or_default());
            state.insert(key, Pdu::from_json(&e.event_id, &e.json)?);
        }
    }
    Ok(state)
}

/// The create and power levels events, which decide who may do what.
pub(crate) const POWER_KEYS: [(StateEventType, String); 2] =
    [(StateEventType::RoomCreate, String::new()), (StateEventType::RoomPowerLevels, String::new())];

/// The user's current membership in the room (`None`: never a member).
pub(crate) async fn membership(
    store: &dyn RoomStore,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Option<MembershipState>, Error> {
    Ok(store.state_event(room_id.as_str(), "m.room.member", user_id.as_str(), None).await?.and_then(|e| e.membership))
}

/// Errors unless the user is joined to the room. Rooms the server does
/// not know answer the same as rooms the user is not in, so room ids
/// cannot be probed.
pub(crate) async fn ensure_joined(store: &dyn RoomStore, room_id: &RoomId, user_id: &UserId) -> Result<(), Error> {
    match membership(store, room_id, user_id).await? {
        Some(MembershipState::Join) => Ok(()),
        _ => Err(Error::Forbidden("you are not joined to this room".into())),
    }
}

/// An event of the room, if there is one (events of other rooms are not).
pub(crate) async fn event_of_room(store: &dyn RoomStore, room_id: &RoomId, event_id: &str) -> Result<Option<StoredEvent>, Error> {
    Ok(store.event(event_id).await?.filter(|e| e.room_id == room_id.as_str()))
}

/// An event of the room, or `M_NOT_FOUND`.
pub(crate) async fn event_in_room(store: &dyn RoomStore, room_id: &RoomId, event_id: &EventId) -> Result<StoredEvent, Error> {
    event_of_room(store, room_id, event_id.as_str()).await?.ok_or_else(|| Error::NotFound("no such event in this room".into()))
}

/// A state event's content as clients see it: stripped by the room
/// version's redaction algorithm if the event was redacted (the store
/// keeps the signed original byte for byte). A content that is not an
/// object reads as `{}`.
pub(crate) fn effective_content(
    event: &StoredEvent,
    rules: &chancery_proto::ruma::room_version_rules::RedactionRules,
) -> Result<serde_json::Value, Error> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&event.json).map_err(|e| Error::Internal(format!("stored event {}: {e}", event.event_id)))?;
    let content = if event.redacted_by.is_some() {
        super::format::redacted_content(&object, rules)?
    } else {
        object.get("content").cloned().unwrap_or_default()
    };
    Ok(if content.is_object() { content } else { serde_json::json!({}) })
}
