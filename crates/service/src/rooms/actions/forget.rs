//! Forgetting rooms (`POST /rooms/{roomId}/forget`): a left room stops
//! appearing in the user's `/sync` (also with `include_leave`) until their
//! membership changes again.

use chancery_proto::ruma::RoomId;
use chancery_proto::ruma::events::room::member::MembershipState;

use super::Rooms;
use crate::rooms::state::membership;
use crate::{AuthedUser, Error};

impl Rooms {
    /// Only rooms the user has left (or was kicked or banned from) can be
    /// forgotten; forgetting a room one never was in changes nothing, as
    /// in Synapse.
    pub async fn forget_room(&self, user: &AuthedUser, room_id: &RoomId) -> Result<(), Error> {
        match membership(&*self.deps.rooms, room_id, &user.user_id).await? {
            None => Ok(()),
            Some(MembershipState::Leave | MembershipState::Ban) => {
                // Storing nothing means the membership changed meanwhile;
                // the room is then not one to forget any more.
                self.deps.forgotten.forget_room(user.user_id.as_str(), room_id.as_str()).await?;
                Ok(())
            }
            Some(_) => Err(Error::Unknown(format!("{} is in room {room_id}; leave it first", user.user_id))),
        }
    }
}
