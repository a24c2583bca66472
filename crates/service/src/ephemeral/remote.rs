//! Typing, receipts and presence of other servers' users, from the EDUs
//! of their transactions (server-server API "Typing Notifications",
//! "Receipts", "Presence"). An EDU is believed only for users of the
//! server that sent it, in rooms they are joined to (presence: joined to
//! some room here); anything else is dropped (EDUs have no answer).

use std::time::Duration;

use chancery_proto::limits::{FEDERATION_TYPING_TIMEOUT_MS, MAX_PRESENCE_UPDATES_PER_EDU, MAX_STATUS_MSG_BYTES};
use chancery_proto::ruma::api::federation::transactions::edu::{Edu, PresenceUpdate};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{EventId, RoomId, ServerName, UserId};
use tokio::time::Instant;

use super::Ephemeral;
use super::cluster::Update;
use crate::rooms::state::{ensure_joined, event_in_room};
use crate::{AuthedUser, Error};

impl Ephemeral {
    /// Applies the typing, receipt and presence EDUs of a transaction from
    /// `origin` (others are handled elsewhere). Returns how many were
    /// applied.
    pub async fn receive_edus(&self, origin: &ServerName, edus: &[Raw<Edu>]) -> usize {
        let mut applied = 0;
        for raw in edus {
            let result = match raw.deserialize() {
                Ok(Edu::Typing(typing)) => self.typing_from(origin, &typing.room_id, &typing.user_id, typing.typing).await,
                Ok(Edu::Receipt(receipts)) => {
                    let mut result = Ok(());
                    for (room_id, map) in &receipts.receipts {
                        for (user_id, data) in &map.read {
                            let thread = data.data.thread.as_str().map(str::to_owned);
                            for event_id in data.event_ids.iter().take(1) {
                                result = result.and(self.receipt_from(origin, room_id, user_id, event_id, thread.clone()).await);
                            }
                        }
                    }
                    result
                }
                Ok(Edu::Presence(presence)) => self.presence_from(origin, &presence.push).await,
                Ok(_) => continue,
                Err(e) => Err(Error::BadJson(e.to_string())),
            };
            match result {
                Ok(()) => applied += 1,
                Err(e) => tracing::debug!(origin = %origin, error = %e, "an EDU was dropped"),
            }
        }
        applied
    }

    /// `m.typing`: a remote user starts or stops typing. Starting lasts
    /// [`FEDERATION_TYPING_TIMEOUT_MS`] unless renewed (the sending server
    /// renews and stops it).
    async fn typing_from(&self, origin: &ServerName, room_id: &RoomId, user_id: &UserId, typing: bool) -> Result<(), Error> {
        ensure_from(origin, user_id)?;
        ensure_allowed(&*self.deps.rooms, room_id, origin).await?;
        ensure_joined(&*self.deps.rooms, room_id, user_id).await?;
        let now = Instant::now();
        let until = typing.then(|| now + Duration::from_millis(FEDERATION_TYPING_TIMEOUT_MS));
        if self.typing.set(room_id.as_str(), user_id.as_str(), until, now, self.deps.clock.now_ms()) {
            self.deps.notifier.room(room_id.as_str());
            self.publish(Update::Typing {
                room_id: room_id.to_string(),
                user_id: user_id.to_string(),
                timeout_ms: typing.then_some(FEDERATION_TYPING_TIMEOUT_MS),
            });
        }
        Ok(())
    }

    /// `m.receipt`: a remote user's public read receipt of an event of the
    /// room.
    async fn receipt_from(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &EventId,
        thread: Option<String>,
    ) -> Result<(), Error> {
        ensure_from(origin, user_id)?;
        ensure_allowed(&*self.deps.rooms, room_id, origin).await?;
        ensure_joined(&*self.deps.rooms, room_id, user_id).await?;
        event_in_room(&*self.deps.rooms, room_id, event_id).await?;
        let user = AuthedUser { user_id: user_id.to_owned(), device_id: String::new(), is_admin: false };
        self.put_receipt(&user, room_id, super::receipts::READ, event_id, thread).await
    }
}

impl Ephemeral {
    /// `m.presence`: remote users' presence, kept (in memory, like local
    /// users') only when presence is on here, for users of `origin` joined
    /// to some room here, at most [`MAX_PRESENCE_UPDATES_PER_EDU`] an EDU.
    async fn presence_from(&self, origin: &ServerName, updates: &[PresenceUpdate]) -> Result<(), Error> {
        if !self.presence.enabled {
            return Ok(());
        }
        let now = self.deps.clock.now_ms();
        for update in updates.iter().take(MAX_PRESENCE_UPDATES_PER_EDU) {
            let user_id = &update.user_id;
            let valid = super::presence::is_known(&update.presence)
                && update.status_msg.as_ref().is_none_or(|m| m.len() <= MAX_STATUS_MSG_BYTES);
            if ensure_from(origin, user_id).is_err() || !valid {
                tracing::debug!(origin = %origin, "a presence update was dropped");
                continue;
            }
            let memberships = self.deps.rooms.memberships_of_user(user_id.as_str()).await?;
            if !memberships.iter().any(|m| m.membership == MembershipState::Join) {
                continue;
            }
            let last_active = now.saturating_sub(u64::from(update.last_active_ago));
            if self.presence.set(user_id.as_str(), &update.presence, update.status_msg.clone(), last_active).is_some() {
                self.deps.notifier.everyone();
                self.publish(Update::Presence {
                    user_id: user_id.to_string(),
                    presence: update.presence.clone(),
                    status_msg: update.status_msg.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The room's server ACL must let the origin in (spec: EDUs of a room
/// from a denied server are ignored).
async fn ensure_allowed(rooms: &dyn chancery_store::RoomStore, room_id: &RoomId, origin: &ServerName) -> Result<(), Error> {
    if !crate::federation::server_allowed_in_room(rooms, room_id, origin).await? {
        return Err(Error::Forbidden(format!("the room's server ACL denies {origin}")));
    }
    Ok(())
}

fn ensure_from(origin: &ServerName, user_id: &UserId) -> Result<(), Error> {
    if user_id.server_name() != origin {
        return Err(Error::Forbidden(format!("{origin} may not speak for {user_id}")));
    }
    Ok(())
}
