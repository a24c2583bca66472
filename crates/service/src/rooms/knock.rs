//! Knocking (client-server API "Knocking on rooms"): a user outside a room
//! whose join rule is `knock` or `knock_restricted` asks to be let in. The
//! knock is an `m.room.member` event the members see; an invite accepts it,
//! a kick or ban refuses it, the knocker's own leave retracts it.

use chancery_core::pdu::EventDraft;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{OwnedRoomId, RoomOrAliasId};
use serde_json::{Value as JsonValue, json};

use super::rules_of;
use crate::{AuthedUser, Error, Services};

impl Services {
    /// `POST /knock/{roomIdOrAlias}`. Knocking again while knocking
    /// changes nothing (members are not notified twice).
    pub async fn knock(&self, user: &AuthedUser, target: &RoomOrAliasId, reason: Option<String>) -> Result<OwnedRoomId, Error> {
        let room_id = self.resolve_room_or_alias(target).await?;
        let info = self
            .store()
            .room(room_id.as_str())
            .await?
            .ok_or_else(|| Error::NotFound("that room does not appear to exist".into()))?;
        let rules = rules_of(&info.room_version)?;
        if !rules.authorization.knocking {
            return Err(Error::Forbidden(format!("room version {} does not support knocking", info.room_version)));
        }
        match self.membership(&room_id, &user.user_id).await? {
            Some(MembershipState::Join) => return Err(Error::Forbidden("you are already in this room".into())),
            Some(MembershipState::Invite) => {
                return Err(Error::Forbidden("you are already invited to this room; join it".into()));
            }
            Some(MembershipState::Ban) => return Err(Error::Forbidden("you are banned from this room".into())),
            Some(MembershipState::Knock) => return Ok(room_id),
            _ => {}
        }
        let join_rules = self.store().state_event(room_id.as_str(), "m.room.join_rules", "", None).await?;
        let join_rule = join_rules
            .and_then(|e| serde_json::from_str::<JsonValue>(&e.json).ok())
            .and_then(|v| v["content"]["join_rule"].as_str().map(str::to_owned));
        if !matches!(join_rule.as_deref(), Some("knock" | "knock_restricted")) {
            return Err(Error::Forbidden("this room does not accept knocks".into()));
        }
        let mut content = json!({"membership": MembershipState::Knock});
        let profile = self.store().profile(user.user_id.as_str()).await?;
        for field in ["displayname", "avatar_url"] {
            if let Some(v) = profile.get(field) {
                content[field] = v.clone();
            }
        }
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let draft = EventDraft {
            room_id: None,
            sender: user.user_id.clone(),
            event_type: "m.room.member".into(),
            state_key: Some(user.user_id.to_string()),
            content,
            redacts: None,
        };
        self.append(&room_id, draft, None).await?;
        Ok(room_id)
    }
}
