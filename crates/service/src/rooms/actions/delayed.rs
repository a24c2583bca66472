//! What the delayed-events component asks of the rooms: whether a user may
//! send an event now (checked when it is scheduled, as Synapse does, so a
//! client learns of a refusal at once), and sending it when it fires,
//! as its sender at that time.

use chancery_proto::ruma::events::{MessageLikeEventType, StateEventType};
use chancery_proto::ruma::{OwnedEventId, RoomId, UserId};
use chancery_store::{DelayedEvent, TxnKey};
use serde_json::Value as JsonValue;

use super::{Rooms, draft};
use crate::Error;
use crate::nul::json_holds_nul;
use crate::rooms::state::{POWER_KEYS, ensure_joined, state_subset};
use crate::rooms::writer::check_type_and_key;
use crate::rooms::{power_levels, rules_of};

/// Events the send endpoints refuse whatever the sender's power: the same
/// refusals as [`Rooms::send_message`] and [`Rooms::send_state`].
pub(crate) fn check_sendable(event_type: &str, state_key: Option<&str>, content: &JsonValue) -> Result<(), Error> {
    check_type_and_key(event_type, state_key)?;
    if !content.is_object() {
        return Err(Error::BadJson("content must be a JSON object".into()));
    }
    if json_holds_nul(content) {
        return Err(Error::BadJson("content may not hold U+0000".into()));
    }
    match (event_type, state_key) {
        ("m.room.redaction", None) => Err(Error::InvalidParam("use /redact to redact events".into())),
        ("m.room.member", Some(_)) => Err(Error::InvalidParam(
            "use the membership endpoints (/invite, /join, /leave, /kick, /ban) to change memberships".into(),
        )),
        ("m.room.create", Some(_)) => Err(Error::Forbidden("a room has exactly one create event".into())),
        _ => Ok(()),
    }
}

impl Rooms {
    /// Whether `user_id` may send this event to the room now: joined, and
    /// with the power its type needs. The writer checks again (all the
    /// auth rules) when the event is sent.
    pub(crate) async fn check_may_send(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        event_type: &str,
        state_key: Option<&str>,
        content: &JsonValue,
    ) -> Result<(), Error> {
        check_sendable(event_type, state_key, content)?;
        ensure_joined(&*self.deps.rooms, room_id, user_id).await?;
        let info = self.deps.rooms.room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
        let rules = rules_of(&info.room_version)?;
        let state = state_subset(&*self.deps.rooms, room_id, &POWER_KEYS).await?;
        let power = power_levels(&state, &rules)?;
        let allowed = match state_key {
            Some(_) => power.user_can_send_state(user_id, StateEventType::from(event_type)),
            None => power.user_can_send_message(user_id, MessageLikeEventType::from(event_type)),
        };
        if !allowed {
            return Err(Error::Forbidden("you do not have the power to send this event in this room".into()));
        }
        Ok(())
    }

    /// Sends a delayed event that fired, as its sender now, through the
    /// writer like any send (not counted against the sender's event rate:
    /// scheduling it was). Its transaction id is the delay id, so sending
    /// it again (a node died after sending, before forgetting it) answers
    /// the first send's event.
    pub(crate) async fn send_delayed(&self, event: &DelayedEvent) -> Result<OwnedEventId, Error> {
        let sender = UserId::parse(&event.user_id).map_err(|_| Error::Internal("stored delayed event sender".into()))?;
        let room_id = RoomId::parse(&event.room_id).map_err(|_| Error::Internal("stored delayed event room".into()))?;
        let state_key = event.state_key.as_deref();
        check_sendable(&event.event_type, state_key, &event.content)?;
        let txn = TxnKey {
            user_id: event.user_id.clone(),
            // A namespace of its own, as redactions have: clients cannot put
            // control characters in a device id.
            device_id: format!("{}\u{1}delayed", event.device_id),
            txn_id: event.delay_id.clone(),
        };
        let draft = draft(&sender, &event.event_type, state_key, event.content.clone(), None);
        match state_key {
            None => Ok(self.deps.writer.append_as_member(&room_id, draft, Some(txn)).await?.0),
            Some(key) => {
                ensure_joined(&*self.deps.rooms, &room_id, &sender).await?;
                if event.event_type == "m.room.canonical_alias" && key.is_empty() {
                    self.deps.directory.check_canonical_alias(&room_id, &event.content).await?;
                }
                Ok(self.deps.writer.append(&room_id, draft, Some(txn)).await?.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sendable_events_are_the_send_endpoints_ones() {
        let cases: [(&str, Option<&str>, JsonValue, bool); 8] = [
            ("org.matrix.msc3401.call.member", Some("_@a:x_DEV"), json!({}), true),
            ("m.room.message", None, json!({"body": "hi"}), true),
            ("m.room.message", None, json!("not an object"), false),
            ("m.room.message", None, json!({"body": "a\u{0}b"}), false),
            ("m.room.redaction", None, json!({}), false),
            ("m.room.member", Some("@a:x"), json!({"membership": "leave"}), false),
            ("m.room.create", Some(""), json!({}), false),
            ("", None, json!({}), false),
        ];
        for (event_type, state_key, content, ok) in cases {
            assert_eq!(check_sendable(event_type, state_key, &content).is_ok(), ok, "{event_type} {state_key:?} {content}");
        }
    }
}
