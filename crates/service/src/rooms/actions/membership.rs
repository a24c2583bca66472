//! Joining, leaving, inviting, kicking, banning: `m.room.member` events
//! whose permission the room version's authorization rules decide.

use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{OwnedEventId, OwnedServerName, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use super::{Rooms, draft};
use crate::rooms::state::{ensure_joined, membership};
use crate::{AuthedUser, Error};

/// A membership change one user makes about another (or themself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipAction {
    Invite,
    Kick,
    Ban,
    Unban,
}

/// The membership `action` gives the target, or what to answer instead:
/// `Ok(None)` when there is nothing to do (an invite of someone invited),
/// an error when the target's membership does not allow it.
fn membership_after(
    action: MembershipAction,
    target: &UserId,
    current: Option<&MembershipState>,
) -> Result<Option<MembershipState>, Error> {
    use MembershipState as M;
    Ok(Some(match action {
        MembershipAction::Invite => match current {
            Some(M::Join) => return Err(Error::Forbidden(format!("{target} is already in the room"))),
            Some(M::Ban) => return Err(Error::Forbidden(format!("{target} is banned from the room"))),
            Some(M::Invite) => return Ok(None),
            _ => M::Invite,
        },
        MembershipAction::Kick => match current {
            Some(M::Join | M::Invite | M::Knock) => M::Leave,
            _ => return Err(Error::Forbidden(format!("{target} is not in the room"))),
        },
        MembershipAction::Ban => M::Ban,
        MembershipAction::Unban => match current {
            Some(M::Ban) => M::Leave,
            _ => return Err(Error::Forbidden(format!("{target} is not banned"))),
        },
    }))
}

impl Rooms {
    async fn member_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: JsonValue,
    ) -> Result<OwnedEventId, Error> {
        if self.deps.rooms.room(room_id.as_str()).await?.is_none() {
            return Err(Error::NotFound("this server does not know that room".into()));
        }
        let draft = draft(sender, "m.room.member", Some(target.as_str()), content, None);
        Ok(self.deps.writer.append(room_id, draft, None).await?.0)
    }

    /// `POST /rooms/{roomId}/join` and `/join/{roomIdOrAlias}`. Joining
    /// again while joined changes nothing. A room this server does not
    /// know is joined through one of `servers` (or the room id's server):
    /// over federation.
    pub async fn join_room(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        reason: Option<String>,
    ) -> Result<(), Error> {
        if membership(&*self.deps.rooms, room_id, &user.user_id).await? == Some(MembershipState::Join) {
            return Ok(());
        }
        let mut content = self.member_content(&user.user_id, MembershipState::Join).await?;
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        if self.deps.rooms.room(room_id.as_str()).await?.is_none() || self.deps.federation.is_stub(room_id).await? {
            return self.deps.federation.join_remote(&user.user_id, room_id, servers, content).await;
        }
        self.member_event(room_id, &user.user_id, &user.user_id, content).await?;
        Ok(())
    }

    /// `POST /rooms/{roomId}/leave` (also rejects an invite).
    pub async fn leave_room(&self, user: &AuthedUser, room_id: &RoomId, reason: Option<String>) -> Result<(), Error> {
        match membership(&*self.deps.rooms, room_id, &user.user_id).await? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
            Some(MembershipState::Leave) => return Ok(()),
            _ => return Err(Error::Forbidden("you are not in this room".into())),
        }
        if self.deps.federation.is_stub(room_id).await? {
            // An invite to a room of another server: refused through it.
            return self.deps.federation.leave_stub(&user.user_id, room_id).await;
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
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let current = membership(&*self.deps.rooms, room_id, target).await?;
        let remote = target.server_name() != self.deps.config.server_name;
        if action == MembershipAction::Invite {
            self.deps.limiters.invites_per_user.check_user(user)?;
            if !remote {
                self.ensure_local_user(target).await?;
            }
        }
        let Some(membership) = membership_after(action, target, current.as_ref())? else { return Ok(()) };
        let mut content = json!({"membership": membership});
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        if action == MembershipAction::Invite && remote {
            return self.invite_remote(user, room_id, target, content).await;
        }
        self.member_event(room_id, &user.user_id, target, content).await?;
        Ok(())
    }

    /// Invites a user of another server: the event is built and checked
    /// here, countersigned by the invitee's server, then appended.
    pub(super) async fn invite_remote(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        target: &UserId,
        content: JsonValue,
    ) -> Result<(), Error> {
        let draft = draft(&user.user_id, "m.room.member", Some(target.as_str()), content, None);
        let invite = self.deps.writer.build_unpersisted(room_id, draft).await?;
        self.deps.federation.invite_remote(room_id, &invite).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_action_makes_of_the_targets_membership() {
        use MembershipAction::*;
        use MembershipState as M;
        let target = UserId::parse("@t:x").unwrap();
        // (action, the target's membership, the outcome: None for an error)
        type Case = (MembershipAction, Option<M>, Option<Option<M>>);
        let cases: &[Case] = &[
            (Invite, None, Some(Some(M::Invite))),
            (Invite, Some(M::Leave), Some(Some(M::Invite))),
            (Invite, Some(M::Knock), Some(Some(M::Invite))),
            (Invite, Some(M::Invite), Some(None)),
            (Invite, Some(M::Join), None),
            (Invite, Some(M::Ban), None),
            (Kick, Some(M::Join), Some(Some(M::Leave))),
            (Kick, Some(M::Knock), Some(Some(M::Leave))),
            (Kick, Some(M::Leave), None),
            (Kick, None, None),
            (Ban, None, Some(Some(M::Ban))),
            (Ban, Some(M::Join), Some(Some(M::Ban))),
            (Unban, Some(M::Ban), Some(Some(M::Leave))),
            (Unban, Some(M::Join), None),
        ];
        for (action, current, expected) in cases {
            let got = membership_after(*action, &target, current.as_ref()).ok();
            assert_eq!(&got, expected, "{action:?} on {current:?}");
        }
    }
}
