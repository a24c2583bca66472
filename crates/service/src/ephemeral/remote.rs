//! Typing and receipts of other servers' users, from the EDUs of their
//! transactions (server-server API "Typing Notifications", "Receipts").
//! An EDU is believed only for users of the server that sent it, in rooms
//! they are joined to; anything else is dropped (EDUs have no answer).

use std::time::Duration;

use chancery_proto::limits::FEDERATION_TYPING_TIMEOUT_MS;
use chancery_proto::ruma::api::federation::transactions::edu::Edu;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{EventId, RoomId, ServerName, UserId};
use tokio::time::Instant;

use super::Ephemeral;
use super::cluster::Update;
use crate::rooms::state::{ensure_joined, event_in_room};
use crate::{AuthedUser, Error};

impl Ephemeral {
    /// Applies the typing and receipt EDUs of a transaction from `origin`
    /// (others are not handled yet). Returns how many were applied.
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
