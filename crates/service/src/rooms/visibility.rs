//! History visibility (client-server API "Room History Visibility"): which
//! events of a room a user may read, from the room's
//! `m.room.history_visibility` and the user's membership at each event.

use chancery_proto::ruma::{RoomId, UserId};
use chancery_store::StoredEvent;
use serde_json::Value as JsonValue;

use crate::{Error, Services};

impl Services {
    async fn visibility_at(&self, room_id: &str, pos: u64) -> Result<String, Error> {
        let event = self.store().state_event(room_id, "m.room.history_visibility", "", Some(pos)).await?;
        Ok(event
            .and_then(|e| serde_json::from_str::<JsonValue>(&e.json).ok())
            .and_then(|v| v["content"]["history_visibility"].as_str().map(str::to_owned))
            // The spec's default when the room has none.
            .unwrap_or_else(|| "shared".to_owned()))
    }

    /// The events (of one room) the user may see, in their order: those
    /// sent while the visibility was `world_readable`, while the user was
    /// joined (or invited, under `invited`), any under `shared` while the
    /// user is joined now, and the user's own membership events.
    pub(crate) async fn visible_events(
        &self,
        user_id: &UserId,
        room_id: &str,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>, Error> {
        if events.is_empty() {
            return Ok(events);
        }
        let joined_now = self
            .store()
            .state_event(room_id, "m.room.member", user_id.as_str(), None)
            .await?
            .and_then(|e| e.membership)
            .as_deref()
            == Some("join");
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(user_id.as_str()) {
                out.push(event);
                continue;
            }
            let visibility = self.visibility_at(room_id, event.stream_pos).await?;
            let allowed = match visibility.as_str() {
                "world_readable" => true,
                "shared" if joined_now => true,
                other => {
                    let member_at =
                        self.store().state_event(room_id, "m.room.member", user_id.as_str(), Some(event.stream_pos)).await?;
                    match member_at.and_then(|m| m.membership).as_deref() {
                        Some("join") => true,
                        Some("invite") => other == "invited" || other == "shared",
                        _ => false,
                    }
                }
            };
            if allowed {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Whether the user may read the room's history at all: members, former
    /// members (up to what visibility allows), and anyone in a
    /// world-readable room. Rooms one never belonged to answer like unknown
    /// rooms.
    pub(crate) async fn ensure_can_read(&self, room_id: &RoomId, user_id: &UserId) -> Result<(), Error> {
        match self.membership(room_id, user_id).await?.as_deref() {
            Some("join" | "leave" | "ban") => Ok(()),
            _ => {
                let current = self.store().current_stream_pos().await?;
                if self.store().room(room_id.as_str()).await?.is_some()
                    && self.visibility_at(room_id.as_str(), current).await? == "world_readable"
                {
                    Ok(())
                } else {
                    Err(Error::Forbidden("you are not joined to this room".into()))
                }
            }
        }
    }
}
