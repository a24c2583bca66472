//! Knocking (client-server API "Knocking on rooms"): a user outside a room
//! whose join rule is `knock` or `knock_restricted` asks to be let in. The
//! knock is an `m.room.member` event the members see; an invite accepts it,
//! a kick or ban refuses it, the knocker's own leave retracts it.

use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room::JoinRuleKind;
use chancery_proto::ruma::{OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId};
use serde_json::{Value as JsonValue, json};

use super::{Rooms, draft};
use crate::rooms::rules_of;
use crate::rooms::state::membership;
use crate::{AuthedUser, Error};

/// Whether the room's `m.room.join_rules` content lets outsiders knock
/// (by the rule's kind alone, as the auth rules read it).
fn accepts_knocks(join_rules_content: Option<&JsonValue>) -> bool {
    let kind = join_rules_content.and_then(|c| c.get("join_rule")?.as_str()).map(JoinRuleKind::from);
    matches!(kind, Some(JoinRuleKind::Knock | JoinRuleKind::KnockRestricted))
}

impl Rooms {
    /// `POST /knock/{roomIdOrAlias}`. Knocking again while knocking
    /// changes nothing (members are not notified twice). A room this
    /// server does not have (or knows only through an invite or an earlier
    /// knock) is knocked on over federation, through `via`, the alias's
    /// servers and the room id's server.
    pub async fn knock(
        &self,
        user: &AuthedUser,
        target: &RoomOrAliasId,
        via: &[OwnedServerName],
        reason: Option<String>,
    ) -> Result<OwnedRoomId, Error> {
        let (room_id, mut servers) = match <&RoomId>::try_from(target) {
            Ok(room_id) => (room_id.to_owned(), Vec::new()),
            Err(alias) => self.deps.directory.resolve_alias_with_servers(alias).await?,
        };
        servers.extend_from_slice(via);
        let current = membership(&*self.deps.rooms, &room_id, &user.user_id).await?;
        let info = self.deps.rooms.room(room_id.as_str()).await?;
        if info.is_none() || self.deps.federation.is_stub(&room_id).await? {
            if current == Some(MembershipState::Knock) {
                return Ok(room_id);
            }
            if current == Some(MembershipState::Invite) {
                return Err(Error::Forbidden("you are already invited to this room; join it".into()));
            }
            let content = self.knock_content(user, reason).await?;
            self.deps.federation.knock_remote(&user.user_id, &room_id, &servers, content).await?;
            return Ok(room_id);
        }
        let info = info.ok_or_else(|| Error::NotFound("that room does not appear to exist".into()))?;
        let rules = rules_of(&info.room_version)?;
        if !rules.authorization.knocking {
            return Err(Error::Forbidden(format!("room version {} does not support knocking", info.room_version)));
        }
        match current {
            Some(MembershipState::Join) => return Err(Error::Forbidden("you are already in this room".into())),
            Some(MembershipState::Invite) => {
                return Err(Error::Forbidden("you are already invited to this room; join it".into()));
            }
            Some(MembershipState::Ban) => return Err(Error::Forbidden("you are banned from this room".into())),
            Some(MembershipState::Knock) => return Ok(room_id),
            _ => {}
        }
        let join_rules = self.deps.rooms.state_event(room_id.as_str(), "m.room.join_rules", "", None).await?;
        let content = join_rules.and_then(|e| serde_json::from_str::<JsonValue>(&e.json).ok()).map(|mut v| v["content"].take());
        if !accepts_knocks(content.as_ref()) {
            return Err(Error::Forbidden("this room does not accept knocks".into()));
        }
        let content = self.knock_content(user, reason).await?;
        let draft = draft(&user.user_id, "m.room.member", Some(user.user_id.as_str()), content, None);
        self.deps.writer.append(&room_id, draft, None).await?;
        Ok(room_id)
    }

    async fn knock_content(&self, user: &AuthedUser, reason: Option<String>) -> Result<JsonValue, Error> {
        let mut content = self.member_content(&user.user_id, MembershipState::Knock).await?;
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_knock_rules_accept_knocks() {
        for (content, accepts) in [
            (Some(json!({"join_rule": "knock"})), true),
            (Some(json!({"join_rule": "knock_restricted", "allow": []})), true),
            (Some(json!({"join_rule": "public"})), false),
            (Some(json!({"join_rule": "invite"})), false),
            (Some(json!({"join_rule": "restricted", "allow": []})), false),
            (Some(json!({"join_rule": 5})), false),
            (Some(json!({})), false),
            (None, false),
        ] {
            assert_eq!(accepts_knocks(content.as_ref()), accepts, "{content:?}");
        }
    }
}
