//! What a room shows to someone who may preview it (spec `RoomSummary`:
//! `GET /room_summary`, each room of `GET /hierarchy`), read from the
//! room's current state.

use chancery_proto::limits::MAX_ALLOW_ROOMS_CHECKED;
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room::{JoinRuleSummary, RoomSummary, RoomType};
use chancery_proto::ruma::room_version_rules::RedactionRules;
use chancery_proto::ruma::{EventEncryptionAlgorithm, OwnedMxcUri, OwnedRoomAliasId, RoomId, RoomVersionId, UInt, UserId};
use chancery_store::{RoomStore, StoredEvent};
use serde_json::Value as JsonValue;

use super::decide::{Access, join_rule_summary, may_preview, needs_allow_check};
use crate::Error;
use crate::rooms::rules_of;
use crate::rooms::state::effective_content;

/// The state events a summary reads (the requester's member event is
/// added to them).
const SUMMARY_STATE: [StateEventType; 9] = [
    StateEventType::RoomCreate,
    StateEventType::RoomName,
    StateEventType::RoomTopic,
    StateEventType::RoomAvatar,
    StateEventType::RoomCanonicalAlias,
    StateEventType::RoomJoinRules,
    StateEventType::RoomHistoryVisibility,
    StateEventType::RoomGuestAccess,
    StateEventType::RoomEncryption,
];

/// A room as its current state describes it, and the requester's place in
/// it.
#[derive(Debug, Clone)]
pub(crate) struct RoomFacts {
    pub summary: RoomSummary,
    /// The requester's membership (`None`: none, or unauthenticated).
    pub membership: Option<MembershipState>,
    pub may_preview: bool,
    pub redaction: RedactionRules,
    /// Not created with `m.federate: false`: other servers may see it.
    pub federates: bool,
    /// Known only through an invite or a knock (no create event here):
    /// its state here is a few stripped events, not the room's.
    pub stub: bool,
}

impl RoomFacts {
    pub(crate) fn is_space(&self) -> bool {
        self.summary.room_type == Some(RoomType::Space)
    }
}

/// A string field of a content, if present and not empty.
fn text<'c>(content: &'c JsonValue, key: &str) -> Option<&'c str> {
    content.get(key).and_then(JsonValue::as_str).filter(|s| !s.is_empty())
}

/// Reads what the requester (`None`: unauthenticated) may know of a room:
/// `None` if this server does not know it. Costs three reads, plus one
/// per allowed room of a restricted room when only those decide.
pub(crate) async fn read_room(
    store: &dyn RoomStore,
    room_id: &RoomId,
    requester: Option<&UserId>,
) -> Result<Option<RoomFacts>, Error> {
    let Some(info) = store.room(room_id.as_str()).await? else { return Ok(None) };
    let redaction = rules_of(&info.room_version)?.redaction;
    let mut keys: Vec<(String, String)> = SUMMARY_STATE.iter().map(|t| (t.to_string(), String::new())).collect();
    if let Some(user) = requester {
        keys.push((StateEventType::RoomMember.to_string(), user.to_string()));
    }
    let events = store.current_state_events(room_id.as_str(), &keys).await?;
    let state = |event_type: StateEventType, state_key: &str| -> Option<&StoredEvent> {
        events.iter().find(|e| e.event_type == event_type.to_string() && e.state_key.as_deref() == Some(state_key))
    };
    let content = |event_type: StateEventType| -> Result<Option<JsonValue>, Error> {
        state(event_type, "").map(|e| effective_content(e, &redaction)).transpose()
    };

    let join_rule = join_rule_summary(content(StateEventType::RoomJoinRules)?.as_ref());
    let history = content(StateEventType::RoomHistoryVisibility)?;
    let world_readable = history.as_ref().and_then(|c| text(c, "history_visibility")) == Some("world_readable");
    let membership =
        requester.and_then(|user| state(StateEventType::RoomMember, user.as_str())).and_then(|e| e.membership.clone());
    let mut access = Access { join_rule: &join_rule, world_readable, membership: membership.as_ref(), in_allowed_room: false };
    if requester.is_some() && needs_allow_check(access) {
        access.in_allowed_room = joined_to_any(store, &join_rule, requester).await?;
    }
    let may_preview = may_preview(access);

    let joined = store.member_summary(room_id.as_str(), requester.map_or("", |u| u.as_str()), 0).await?.joined;
    let mut summary = RoomSummary::new(
        room_id.to_owned(),
        join_rule.clone(),
        content(StateEventType::RoomGuestAccess)?.as_ref().and_then(|c| text(c, "guest_access")) == Some("can_join"),
        UInt::new_saturating(joined),
        world_readable,
    );
    let name = content(StateEventType::RoomName)?;
    summary.name = name.as_ref().and_then(|c| text(c, "name")).map(str::to_owned);
    let topic = content(StateEventType::RoomTopic)?;
    summary.topic = topic.as_ref().and_then(|c| text(c, "topic")).map(str::to_owned);
    let avatar = content(StateEventType::RoomAvatar)?;
    summary.avatar_url = avatar.as_ref().and_then(|c| text(c, "url")).map(OwnedMxcUri::from);
    let alias = content(StateEventType::RoomCanonicalAlias)?;
    summary.canonical_alias = alias.as_ref().and_then(|c| text(c, "alias")).and_then(|a| OwnedRoomAliasId::try_from(a).ok());
    let create = content(StateEventType::RoomCreate)?;
    summary.room_type = create.as_ref().and_then(|c| text(c, "type")).map(RoomType::from);
    let stub = create.is_none();
    let federates = create.as_ref().and_then(|c| c.get("m.federate")).and_then(JsonValue::as_bool) != Some(false);
    let encryption = content(StateEventType::RoomEncryption)?;
    summary.encryption = encryption.as_ref().and_then(|c| text(c, "algorithm")).map(EventEncryptionAlgorithm::from);
    summary.room_version = Some(RoomVersionId::clone(&info.room_version));
    Ok(Some(RoomFacts { summary, membership, may_preview, redaction, federates, stub }))
}

/// Whether the requester is joined to one of the rooms a restricted join
/// rule allows (the first [`MAX_ALLOW_ROOMS_CHECKED`] of them).
pub(super) async fn joined_to_any(
    store: &dyn RoomStore,
    rule: &JoinRuleSummary,
    requester: Option<&UserId>,
) -> Result<bool, Error> {
    let (JoinRuleSummary::Restricted(r) | JoinRuleSummary::KnockRestricted(r)) = rule else { return Ok(false) };
    let Some(user) = requester else { return Ok(false) };
    for allowed in r.allowed_room_ids.iter().take(MAX_ALLOW_ROOMS_CHECKED) {
        let member = store.state_event(allowed.as_str(), "m.room.member", user.as_str(), None).await?;
        if member.and_then(|m| m.membership) == Some(MembershipState::Join) {
            return Ok(true);
        }
    }
    Ok(false)
}
