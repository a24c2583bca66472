//! `POST /rooms/{roomId}/upgrade` (client-server API "Room Upgrades"):
//! the new room is created with the old one's important state, the old
//! room gets a tombstone (and, where the upgrader's power allows, no
//! canonical alias and restricted power levels), and the old room's local
//! aliases and directory listing move over, all in one transaction, so a
//! crash never leaves a tombstone without its replacement or an alias
//! pointing at a room that does not exist. A room is upgraded once; its
//! tombstone is final.

use chancery_core::pdu::Pdu;
use chancery_proto::limits::{MAX_APPEND_RETRIES, MAX_UPGRADE_ADDITIONAL_CREATORS};
use chancery_proto::ruma::canonical_json::redact;
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::events::room::power_levels::RoomPowerLevels;
use chancery_proto::ruma::room_version_rules::{RedactionRules, RoomVersionRules};
use chancery_proto::ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId};
use chancery_store::{NewEvent, NewRoom, RoomInfo, RoomUpgrade, StoreError, StoredEvent};
use serde_json::{Map, Value as JsonValue, json};

use super::Rooms;
use crate::rooms::state::{current_state, ensure_joined};
use crate::rooms::{StateMap, power_levels, rules_of, supported_room_version};
use crate::{AuthedUser, Error, tokens};

/// `POST /rooms/{roomId}/upgrade`.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRoom {
    pub new_version: String,
    /// Creators besides the upgrader, for versions that have them (v12).
    pub additional_creators: Vec<OwnedUserId>,
}

/// State the spec recommends transferring (besides power levels, which
/// are adjusted, and the canonical alias, whose aliases move along).
const TRANSFERRED_STATE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

/// The old room as the upgrade found it.
struct OldRoom {
    room_id: OwnedRoomId,
    info: RoomInfo,
    rules: RoomVersionRules,
    /// Its current state, parsed, for the auth rules.
    state: StateMap,
    levels: RoomPowerLevels,
    /// Its current state as stored, for contents as clients see them.
    stored: Vec<StoredEvent>,
}

impl OldRoom {
    /// The content of its state event of `event_type` (state key ""), as
    /// clients see it.
    fn content_of(&self, event_type: &str) -> Result<Option<JsonValue>, Error> {
        self.stored
            .iter()
            .find(|e| e.event_type == event_type && e.state_key.as_deref() == Some(""))
            .map(|e| visible_content(e, &self.rules.redaction))
            .transpose()
    }
}

/// Who creates the new room: the upgrader, and the additional creators
/// the new version allows (each once, the upgrader not among them).
struct Creators {
    upgrader: OwnedUserId,
    additional: Vec<OwnedUserId>,
}

impl Creators {
    fn new(upgrader: &OwnedUserId, requested: &[OwnedUserId], new_rules: &RoomVersionRules) -> Self {
        let mut additional: Vec<OwnedUserId> = Vec::new();
        if new_rules.authorization.additional_room_creators {
            for extra in requested {
                if extra != upgrader && !additional.contains(extra) {
                    additional.push(extra.clone());
                }
            }
        }
        Self { upgrader: upgrader.clone(), additional }
    }

    fn all(&self) -> Vec<OwnedUserId> {
        std::iter::once(&self.upgrader).chain(&self.additional).cloned().collect()
    }
}

/// The new room's create event content.
fn new_create_content(
    old: &OldRoom,
    new_version: &RoomVersionId,
    new_rules: &RoomVersionRules,
    creators: &Creators,
) -> Result<Map<String, JsonValue>, Error> {
    let old_create = old.content_of("m.room.create")?.unwrap_or_default();
    let mut create = Map::new();
    create.insert("room_version".into(), json!(new_version));
    let mut predecessor = json!({ "room_id": old.room_id });
    if let Some(last) = old.info.forward_extremities.first() {
        predecessor["event_id"] = json!(last);
    }
    create.insert("predecessor".into(), predecessor);
    if !new_rules.authorization.use_room_create_sender {
        create.insert("creator".into(), json!(creators.upgrader));
    }
    for kept in ["type", "m.federate"] {
        if let Some(value) = old_create.get(kept) {
            create.insert(kept.into(), value.clone());
        }
    }
    if !creators.additional.is_empty() {
        create.insert("additional_creators".into(), json!(creators.additional));
    }
    Ok(create)
}

/// A state event's content as clients see it: redacted by the room
/// version's algorithm if it was redacted (the stored PDU keeps it whole).
fn visible_content(event: &StoredEvent, rules: &RedactionRules) -> Result<JsonValue, Error> {
    let object: CanonicalJsonObject =
        serde_json::from_str(&event.json).map_err(|e| Error::Internal(format!("stored event: {e}")))?;
    let object = if event.redacted_by.is_some() {
        redact(object, rules, None).map_err(|e| Error::Internal(format!("redacting stored event: {e}")))?
    } else {
        object
    };
    Ok(object.get("content").map(|c| serde_json::to_value(c).unwrap_or_default()).unwrap_or_else(|| json!({})))
}

fn int_of(value: Option<&JsonValue>, default: i64) -> i64 {
    value.and_then(JsonValue::as_i64).unwrap_or(default)
}

/// The old room's power levels, adjusted for the new room: creators of a
/// version that privileges them (v12) are never listed; coming from such
/// a version, the old creators get 100 instead of their implicit power.
fn new_power_levels(
    old: Option<&Pdu>,
    old_creators: &[OwnedUserId],
    new_rules: &RoomVersionRules,
    new_creators: &[OwnedUserId],
) -> Map<String, JsonValue> {
    let mut content = old.and_then(|p| p.content_json().as_object().cloned()).unwrap_or_default();
    let mut users = content.get("users").and_then(|u| u.as_object().cloned()).unwrap_or_default();
    if new_rules.authorization.explicitly_privilege_room_creators {
        for creator in new_creators {
            users.remove(creator.as_str());
        }
    } else {
        for creator in old_creators {
            users.entry(creator.to_string()).or_insert(json!(100));
        }
    }
    content.insert("users".into(), JsonValue::Object(users));
    content
}

/// The level that can send every state event these power levels
/// describe, the power levels themselves included.
fn level_for_all_state(levels: &Map<String, JsonValue>) -> i64 {
    let events = levels.get("events").and_then(|e| e.as_object());
    let highest_event = events.map(|e| e.values().filter_map(JsonValue::as_i64).max().unwrap_or(0)).unwrap_or(0);
    int_of(levels.get("state_default"), 50).max(highest_event)
}

impl Rooms {
    pub async fn upgrade_room(&self, user: &AuthedUser, room_id: &RoomId, req: UpgradeRoom) -> Result<OwnedRoomId, Error> {
        self.deps.limiters.rooms_per_user.check_user(user)?;
        let Some(new_version) = supported_room_version(&req.new_version) else {
            return Err(Error::UnsupportedRoomVersion(req.new_version));
        };
        if req.additional_creators.len() > MAX_UPGRADE_ADDITIONAL_CREATORS {
            return Err(Error::InvalidParam(format!("at most {MAX_UPGRADE_ADDITIONAL_CREATORS} additional creators")));
        }
        // Built under the old room's write lock and checked against its
        // forward extremities like any append.
        let _exclusive = self.deps.writer.exclusive(room_id).await;
        for _ in 0..MAX_APPEND_RETRIES {
            let upgrade = self.plan_upgrade(user, room_id, &new_version, &req).await?;
            let new_room_id = OwnedRoomId::try_from(upgrade.new_room.room_id.as_str())
                .map_err(|e| Error::Internal(format!("built room id: {e}")))?;
            match self.deps.addresses.upgrade_room(upgrade).await {
                Ok(_) => {
                    // The old room's members see the tombstone; the
                    // upgrader joined the new room.
                    if let Some(after) = self.deps.notifier.event(room_id.as_str(), Some(user.user_id.as_str())) {
                        after();
                    }
                    tracing::info!(old_room_id = %room_id, new_room_id = %new_room_id, "room upgraded");
                    return Ok(new_room_id);
                }
                // Another node wrote to the old room, or (v10/v11) the
                // random id of the new room exists: build again.
                Err(StoreError::StaleExtremities | StoreError::RoomIdTaken) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::LimitExceeded { retry_after_ms: 100 })
    }

    /// Checks the upgrade is allowed and builds every event of it on the
    /// old room's current state.
    async fn plan_upgrade(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        new_version: &RoomVersionId,
        req: &UpgradeRoom,
    ) -> Result<RoomUpgrade, Error> {
        let old = self.read_old_room(user, room_id).await?;
        let new_rules = rules_of(new_version)?;
        let creators = Creators::new(&user.user_id, &req.additional_creators, &new_rules);
        let creator_join = self.member_content(&user.user_id, MembershipState::Join).await?;
        let (new_room_id, new_room_events, canonical) =
            self.build_new_room(&old, new_version, &new_rules, &creators, creator_join)?;
        let new_room = NewRoom {
            room_id: new_room_id.to_string(),
            room_version: new_version.clone(),
            creator: user.user_id.to_string(),
            created_ts: self.deps.clock.now_ms(),
        };
        let old_extremities = old.info.forward_extremities.clone();
        let old_room_events = self.build_old_room_events(old, &creators.upgrader, &new_room_id, canonical.is_some())?;
        Ok(RoomUpgrade { old_room_id: room_id.to_string(), old_extremities, old_room_events, new_room, new_room_events })
    }

    /// The old room, if the user may upgrade it and it was not upgraded.
    async fn read_old_room(&self, user: &AuthedUser, room_id: &RoomId) -> Result<OldRoom, Error> {
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let info = self.deps.rooms.room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
        let rules = rules_of(&info.room_version)?;
        let state = current_state(&*self.deps.rooms, room_id).await?;
        let levels = power_levels(&state, &rules)?;
        if !levels.user_can_send_state(&user.user_id, StateEventType::RoomTombstone) {
            return Err(Error::Forbidden("you need the power to send m.room.tombstone to upgrade this room".into()));
        }
        if state.contains_key(&(StateEventType::RoomTombstone, String::new())) {
            return Err(Error::Forbidden("this room has already been upgraded".into()));
        }
        let stored = self.deps.rooms.state_at(room_id.as_str(), None).await?;
        Ok(OldRoom { room_id: room_id.to_owned(), info, rules, state, levels, stored })
    }

    /// The new room's events: create, the upgrader's join, power levels,
    /// the transferred state and canonical alias. Returns the new room's
    /// id, its events and the canonical alias content it took over.
    fn build_new_room(
        &self,
        old: &OldRoom,
        new_version: &RoomVersionId,
        new_rules: &RoomVersionRules,
        creators: &Creators,
        creator_join: JsonValue,
    ) -> Result<(OwnedRoomId, Vec<NewEvent>, Option<JsonValue>), Error> {
        let creator = &creators.upgrader;
        let new_room_id = (!new_rules.authorization.room_create_event_id_as_room_id).then(|| {
            let id = tokens::random_string(&*self.deps.entropy, tokens::ALNUM, 18);
            RoomId::parse(format!("!{id}:{}", self.deps.config.server_name)).expect("valid room id")
        });
        let mut b = self.deps.writer.builder(new_rules.clone(), new_room_id, StateMap::new(), vec![], 0);
        b.push(creator, "m.room.create", "", JsonValue::Object(new_create_content(old, new_version, new_rules, creators)?))?;
        let new_room_id = b.room_id().cloned().expect("the create event sets the room id");
        b.push(creator, "m.room.member", creator.as_str(), creator_join)?;

        let old_creators: Vec<OwnedUserId> = old.levels.rules.privileged_creators.iter().flatten().cloned().collect();
        let levels = new_power_levels(
            old.state.get(&(StateEventType::RoomPowerLevels, String::new())),
            &old_creators,
            new_rules,
            &creators.all(),
        );
        // Synapse's approach: if the copied levels would not let the
        // upgrader send the copied state, start with a version raising
        // only them, and set the copied levels last.
        let needed = level_for_all_state(&levels);
        let own =
            levels["users"].get(creator.as_str()).and_then(JsonValue::as_i64).unwrap_or(int_of(levels.get("users_default"), 0));
        let escalate = !new_rules.authorization.explicitly_privilege_room_creators && own < needed;
        if escalate {
            let mut temporary = levels.clone();
            temporary["users"][creator.as_str()] = json!(needed);
            b.push(creator, "m.room.power_levels", "", JsonValue::Object(temporary))?;
        } else {
            b.push(creator, "m.room.power_levels", "", JsonValue::Object(levels.clone()))?;
        }
        for event_type in TRANSFERRED_STATE {
            let Some(mut content) = old.content_of(event_type)? else { continue };
            if *event_type == "m.room.join_rules"
                && let Some(JsonValue::Array(allow)) = content.get_mut("allow")
            {
                // Members of the old room may join the new one.
                for condition in allow.iter_mut() {
                    if condition.get("room_id").and_then(|r| r.as_str()) == Some(old.room_id.as_str()) {
                        condition["room_id"] = json!(new_room_id);
                    }
                }
            }
            b.push(creator, event_type, "", content)?;
        }
        // The aliases it names move with this transaction.
        let canonical = old.content_of("m.room.canonical_alias")?.filter(|c| c.as_object().is_some_and(|o| !o.is_empty()));
        if let Some(content) = &canonical {
            b.push(creator, "m.room.canonical_alias", "", content.clone())?;
        }
        if escalate {
            b.push(creator, "m.room.power_levels", "", JsonValue::Object(levels))?;
        }
        Ok((new_room_id, b.take_events(), canonical))
    }

    /// The old room's events: the tombstone, then (where the upgrader's
    /// power allows) no canonical alias and restricted power levels.
    fn build_old_room_events(
        &self,
        old: OldRoom,
        creator: &OwnedUserId,
        new_room_id: &OwnedRoomId,
        had_canonical_alias: bool,
    ) -> Result<Vec<NewEvent>, Error> {
        let restricted = restricted_power_levels(old.content_of("m.room.power_levels")?);
        let prev: Vec<OwnedEventId> = old
            .info
            .forward_extremities
            .iter()
            .map(|e| e.as_str().try_into())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Internal(format!("stored extremity: {e}")))?;
        let mut b = self.deps.writer.builder(old.rules, Some(old.room_id), old.state, prev, old.info.max_depth);
        b.push(
            creator,
            "m.room.tombstone",
            "",
            json!({ "body": "This room has been replaced", "replacement_room": new_room_id }),
        )?;
        if had_canonical_alias && let Err(e) = b.push(creator, "m.room.canonical_alias", "", json!({})) {
            tracing::debug!(error = %e, "old room keeps its canonical alias");
        }
        if let Some(restricted) = restricted
            && let Err(e) = b.push(creator, "m.room.power_levels", "", restricted)
        {
            tracing::debug!(error = %e, "old room keeps its power levels");
        }
        Ok(b.take_events())
    }
}

/// Spec step 6: `events_default` and `invite` raised to the greater of 50
/// and `users_default + 1`; `None` if they already are.
fn restricted_power_levels(current: Option<JsonValue>) -> Option<JsonValue> {
    let mut content = current.and_then(|c| c.as_object().cloned()).unwrap_or_default();
    let restricted = 50.max(int_of(content.get("users_default"), 0).saturating_add(1));
    let mut changed = false;
    for key in ["events_default", "invite"] {
        if int_of(content.get(key), 0) < restricted {
            content.insert(key.into(), json!(restricted));
            changed = true;
        }
    }
    changed.then_some(JsonValue::Object(content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_room_levels_are_restricted_once() {
        let restricted = restricted_power_levels(Some(json!({"users_default": 0, "events_default": 0, "invite": 0, "ban": 50})));
        assert_eq!(restricted, Some(json!({"users_default": 0, "events_default": 50, "invite": 50, "ban": 50})));
        assert_eq!(restricted_power_levels(restricted), None);
        assert_eq!(
            restricted_power_levels(Some(json!({"users_default": 60, "events_default": 70}))),
            Some(json!({"users_default": 60, "events_default": 70, "invite": 61}))
        );
        assert_eq!(restricted_power_levels(None), Some(json!({"events_default": 50, "invite": 50})));
    }

    #[test]
    fn levels_needed_cover_every_state_event() {
        let levels = json!({"state_default": 50, "events": {"m.room.power_levels": 100, "m.room.tombstone": 150}});
        assert_eq!(level_for_all_state(levels.as_object().unwrap()), 150);
        assert_eq!(level_for_all_state(&Map::new()), 50);
    }
}
