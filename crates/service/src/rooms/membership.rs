//! Joining, leaving, inviting, kicking, banning: `m.room.member` events
//! whose permission the room version's authorization rules decide.

use chancery_core::pdu::EventDraft;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{OwnedEventId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use crate::{AuthedUser, Error, Services};

/// A membership change one user makes about another (or themself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipAction {
    Invite,
    Kick,
    Ban,
    Unban,
}

impl Services {
    async fn member_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: JsonValue,
    ) -> Result<OwnedEventId, Error> {
        if self.store().room(room_id.as_str()).await?.is_none() {
            return Err(Error::NotFound("this server does not know that room".into()));
        }
        let draft = EventDraft {
            room_id: None,
            sender: sender.to_owned(),
            event_type: "m.room.member".into(),
            state_key: Some(target.to_string()),
            content,
            redacts: None,
        };
        Ok(self.append(room_id, draft, None).await?.0)
    }

    /// `POST /rooms/{roomId}/join` and `/join/{roomIdOrAlias}` for a room
    /// on this server. Joining again while joined changes nothing.
    pub async fn join_room(&self, user: &AuthedUser, room_id: &RoomId, reason: Option<String>) -> Result<(), Error> {
        if self.membership(room_id, &user.user_id).await? == Some(MembershipState::Join) {
            return Ok(());
        }
        let mut content = json!({"membership": MembershipState::Join});
        let profile = self.store().profile(user.user_id.as_str()).await?;
        for field in ["displayname", "avatar_url"] {
            if let Some(v) = profile.get(field) {
                content[field] = v.clone();
            }
        }
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        self.member_event(room_id, &user.user_id, &user.user_id, content).await?;
        Ok(())
    }

    /// `POST /rooms/{roomId}/leave` (also rejects an invite).
    pub async fn leave_room(&self, user: &AuthedUser, room_id: &RoomId, reason: Option<String>) -> Result<(), Error> {
        match self.membership(room_id, &user.user_id).await? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
            Some(MembershipState::Leave) => return Ok(()),
            _ => return Err(Error::Forbidden("you are not in this room".into())),
        }
        let mut content = json!({"membership": MembershipState::Leave});
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        self.member_event(room_id, &user.user_id, &user.user_id, content).await?;
        Ok(())
    }

    /// `/invite`, `/kick`, `/ban`, `/unban`.
    pub async fn change_membership(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        target: &UserId,
        action: MembershipAction,
        reason: Option<String>,
    ) -> Result<(), Error> {
        // Only members act on others: answering from the target's
        // membership first would let outsiders probe who is in a room.
        self.ensure_joined(room_id, &user.user_id).await?;
        let current = self.membership(room_id, target).await?;
        let membership = match action {
            MembershipAction::Invite => {
                self.ensure_local_user(target).await?;
                match current {
                    Some(MembershipState::Join) => return Err(Error::Forbidden(format!("{target} is already in the room"))),
                    Some(MembershipState::Ban) => return Err(Error::Forbidden(format!("{target} is banned from the room"))),
                    Some(MembershipState::Invite) => return Ok(()),
                    _ => MembershipState::Invite,
                }
            }
            MembershipAction::Kick => match current {
                Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => MembershipState::Leave,
                _ => return Err(Error::Forbidden(format!("{target} is not in the room"))),
            },
            MembershipAction::Ban => MembershipState::Ban,
            MembershipAction::Unban => match current {
                Some(MembershipState::Ban) => MembershipState::Leave,
                _ => return Err(Error::Forbidden(format!("{target} is not banned"))),
            },
        };
        let mut content = json!({"membership": membership});
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        self.member_event(room_id, &user.user_id, target, content).await?;
        Ok(())
    }

    /// `GET /joined_rooms`.
    pub async fn joined_rooms(&self, user: &AuthedUser) -> Result<Vec<String>, Error> {
        let memberships = self.store().memberships_of_user(user.user_id.as_str()).await?;
        Ok(memberships.into_iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id).collect())
    }
}
