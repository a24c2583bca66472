//! Which declared relations the writer records with their event
//! (client-server API "Forming relationships between events"). A relation
//! is recorded only when it is valid, so every reader (pages,
//! aggregations, counts) can trust the table without re-checking rules:
//! - the parent is an event this server has, in the same room (spec:
//!   relations across rooms "are simply ignored");
//! - `m.replace`: the rules of "Validity of replacement events" (same
//!   sender and type, no state events, not an edit of an edit, with
//!   `m.new_content`); an invalid edit is stored as a plain event;
//! - `m.annotation`: has a `key` and does not annotate an edit or an
//!   annotation; a sender's second identical annotation is refused with
//!   `M_DUPLICATE_ANNOTATION` ("Avoiding duplicate annotations");
//! - `m.thread`: a thread cannot start at an event that itself has a
//!   relation, so threads do not nest; refused with 400 `M_UNKNOWN`, the
//!   code the spec's "Validation of m.thread relationships" prescribes.
//!
//! The checks run inside the room's write lock, so two identical
//! annotations sent at once through this node cannot both pass. Through
//! two nodes sharing PostgreSQL they still can; the spec tolerates that
//! (duplicates also arrive over federation), and annotation counts count
//! each sender once.

use chancery_core::pdu::EventDraft;
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::{NewRelation, RelationStore, RoomStore, StoredEvent};
use serde_json::Value as JsonValue;

use crate::Error;
use crate::rooms::state::event_of_room;

/// `content["m.relates_to"]` with a `rel_type` and a well-formed `event_id`
/// (anything else is a rich reply, or no relation the server handles).
pub(crate) struct Declared {
    parent: String,
    rel_type: String,
    key: Option<String>,
}

pub(crate) fn declared_relation(content: &JsonValue) -> Option<Declared> {
    let relates_to = content.get("m.relates_to")?;
    let rel_type = relates_to.get("rel_type")?.as_str()?.to_owned();
    let parent = relates_to.get("event_id")?.as_str()?;
    EventId::parse(parent).ok()?;
    let key = relates_to.get("key").and_then(JsonValue::as_str).map(str::to_owned);
    Some(Declared { parent: parent.to_owned(), rel_type, key })
}

/// The `rel_type` of a stored event's own relation, from its content as
/// clients see it (a redacted event has no content, so no relation).
fn rel_type_of(event: &StoredEvent) -> Option<String> {
    if event.redacted_by.is_some() {
        return None;
    }
    let json: JsonValue = serde_json::from_str(&event.json).ok()?;
    json.get("content")?.get("m.relates_to")?.get("rel_type")?.as_str().map(str::to_owned)
}

/// Spec "Validity of replacement events". The encrypted payload of an
/// `m.room.encrypted` edit holds `m.new_content`, so it cannot be checked.
fn is_valid_replacement(draft: &EventDraft, original: &StoredEvent) -> bool {
    draft.sender.as_str() == original.sender
        && draft.event_type == original.event_type
        && draft.state_key.is_none()
        && original.state_key.is_none()
        && rel_type_of(original).as_deref() != Some("m.replace")
        && (draft.event_type == "m.room.encrypted" || draft.content.get("m.new_content").is_some_and(JsonValue::is_object))
}

/// The relation to record with `draft`, if it declares a valid one; an
/// error if the spec asks to refuse the event. Called under the room's
/// write lock.
pub(super) async fn relation_to_record(
    rooms: &dyn RoomStore,
    relations: &dyn RelationStore,
    room_id: &RoomId,
    draft: &EventDraft,
) -> Result<Option<NewRelation>, Error> {
    let Some(declared) = declared_relation(&draft.content) else { return Ok(None) };
    let Some(parent) = event_of_room(rooms, room_id, &declared.parent).await? else { return Ok(None) };
    let key = match declared.rel_type.as_str() {
        "m.thread" => {
            if rel_type_of(&parent).is_some() {
                return Err(Error::Unknown(
                    "a thread cannot start at an event that relates to another one (threads do not nest)".into(),
                ));
            }
            None
        }
        "m.replace" => {
            if !is_valid_replacement(draft, &parent) {
                return Ok(None);
            }
            None
        }
        "m.annotation" => {
            let Some(key) = declared.key else { return Ok(None) };
            if matches!(rel_type_of(&parent).as_deref(), Some("m.annotation" | "m.replace")) {
                return Ok(None);
            }
            let mine = relations.annotation_counts(&declared.parent, Some(draft.sender.as_str())).await?;
            if mine.iter().any(|a| a.event_type == draft.event_type && a.key == key) {
                return Err(Error::DuplicateAnnotation);
            }
            Some(key)
        }
        _ => None,
    };
    Ok(Some(NewRelation { parent: declared.parent, rel_type: declared.rel_type, key }))
}
