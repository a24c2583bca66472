//! Room upgrades (module "Room upgrades", server behaviour): a new room of
//! the requested version whose create event names its predecessor, the
//! transferable state copied over, the local aliases and directory
//! listing moved, and in the old room a tombstone, a cleared canonical
//! alias and power levels that stop ordinary members from talking or
//! inviting.
//!
//! All of it is one store transaction (`DirectoryStore::upgrade_room`),
//! built under the old room's write lock: a crash or a concurrent writer
//! never leaves a tombstone without its room, or aliases pointing at a
//! room that does not exist. A room is upgraded once; its tombstone is
//! final.

use chancery_core::pdu::Pdu;
use chancery_proto::limits::{MAX_APPEND_RETRIES, MAX_UPGRADE_ADDITIONAL_CREATORS};
use chancery_proto::ruma::canonical_json::redact;
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::room_version_rules::{RedactionRules, RoomVersionRules};
use chancery_proto::ruma::{CanonicalJsonObject, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId};
use chancery_store::{NewRoom, RoomUpgrade, StoreError, StoredEvent};
use serde_json::{Map, Value as JsonValue, json};

use super::create::Builder;
use super::{StateMap, power_levels, rules_of, supported_room_version};
use crate::{AuthedUser, Error, Services, now_ms, tokens};

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

impl Services {
    pub async fn upgrade_room(&self, user: &AuthedUser, room_id: &RoomId, req: UpgradeRoom) -> Result<OwnedRoomId, Error> {
        let Some(new_version) = supported_room_version(&req.new_version) else {
            return Err(Error::UnsupportedRoomVersion(req.new_version));
        };
        if req.additional_creators.len() > MAX_UPGRADE_ADDITIONAL_CREATORS {
            return Err(Error::InvalidParam(format!("at most {MAX_UPGRADE_ADDITIONAL_CREATORS} additional creators")));
        }
        let writer = self.inner.rooms.lock_for(room_id);
        let _guard = writer.lock.lock().await;
        writer.drain().await;
        for _ in 0..MAX_APPEND_RETRIES {
            let upgrade = self.plan_upgrade(user, room_id, &new_version, &req).await?;
            let new_room_id = OwnedRoomId::try_from(upgrade.new_room.room_id.as_str())
                .map_err(|e| Error::Internal(format!("built room id: {e}")))?;
            match self.store().upgrade_room(upgrade).await {
                Ok(_) => {
                    // The old room's members see the tombstone; the
                    // upgrader joined the new room.
                    self.wake_for_event(room_id.as_str(), Some(user.user_id.as_str()));
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
        self.ensure_joined(room_id, &user.user_id).await?;
        let info = self.store().room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
        let old_rules = rules_of(&info.room_version)?;
        let new_rules = rules_of(new_version)?;
        let state = self.current_state(room_id).await?;
        let old_levels = power_levels(&state, &old_rules)?;
        if !old_levels.user_can_send_state(&user.user_id, StateEventType::RoomTombstone) {
            return Err(Error::Forbidden("you need the power to send m.room.tombstone to upgrade this room".into()));
        }
        if state.contains_key(&(StateEventType::RoomTombstone, String::new())) {
            return Err(Error::Forbidden("this room has already been upgraded".into()));
        }
        let stored_state = self.store().state_at(room_id.as_str(), None).await?;
        let content_of = |event_type: &str| -> Result<Option<JsonValue>, Error> {
            stored_state
                .iter()
                .find(|e| e.event_type == event_type && e.state_key.as_deref() == Some(""))
                .map(|e| visible_content(e, &old_rules.redaction))
                .transpose()
        };

        // The new room.
        let creator = user.user_id.clone();
        let mut additional: Vec<OwnedUserId> = Vec::new();
        if new_rules.authorization.additional_room_creators {
            for extra in &req.additional_creators {
                if *extra != creator && !additional.contains(extra) {
                    additional.push(extra.clone());
                }
            }
        }
        let old_create = content_of("m.room.create")?.unwrap_or_default();
        let mut create = Map::new();
        create.insert("room_version".into(), json!(new_version));
        let mut predecessor = json!({ "room_id": room_id });
        if let Some(last) = info.forward_extremities.first() {
            predecessor["event_id"] = json!(last);
        }
        create.insert("predecessor".into(), predecessor);
        if !new_rules.authorization.use_room_create_sender {
            create.insert("creator".into(), json!(creator));
        }
        for kept in ["type", "m.federate"] {
            if let Some(value) = old_create.get(kept) {
                create.insert(kept.into(), value.clone());
            }
        }
        if !additional.is_empty() {
            create.insert("additional_creators".into(), json!(additional));
        }
        let new_room_id = (!new_rules.authorization.room_create_event_id_as_room_id).then(|| {
            RoomId::parse(format!("!{}:{}", tokens::random_string(tokens::ALNUM, 18), self.server_name())).expect("valid room id")
        });
        let mut b = Builder {
            services: self,
            rules: new_rules.clone(),
            room_id: new_room_id,
            state: StateMap::new(),
            prev: vec![],
            depth: 0,
            events: vec![],
        };
        b.push(&creator, "m.room.create", "", JsonValue::Object(create))?;
        let new_room_id = b.room_id.clone().expect("the create event sets the room id");

        let profile = self.store().profile(creator.as_str()).await?;
        let mut join = json!({"membership": "join"});
        for field in ["displayname", "avatar_url"] {
            if let Some(v) = profile.get(field) {
                join[field] = v.clone();
            }
        }
        b.push(&creator, "m.room.member", creator.as_str(), join)?;

        let old_creators: Vec<OwnedUserId> = old_levels.rules.privileged_creators.iter().flatten().cloned().collect();
        let mut new_creators = vec![creator.clone()];
        new_creators.extend(additional.iter().cloned());
        let levels = new_power_levels(
            state.get(&(StateEventType::RoomPowerLevels, String::new())),
            &old_creators,
            &new_rules,
            &new_creators,
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
            b.push(&creator, "m.room.power_levels", "", JsonValue::Object(temporary))?;
        } else {
            b.push(&creator, "m.room.power_levels", "", JsonValue::Object(levels.clone()))?;
        }
        for event_type in TRANSFERRED_STATE {
            let Some(mut content) = content_of(event_type)? else { continue };
            if *event_type == "m.room.join_rules"
                && let Some(JsonValue::Array(allow)) = content.get_mut("allow")
            {
                // Members of the old room may join the new one.
                for condition in allow.iter_mut() {
                    if condition.get("room_id").and_then(|r| r.as_str()) == Some(room_id.as_str()) {
                        condition["room_id"] = json!(new_room_id);
                    }
                }
            }
            b.push(&creator, event_type, "", content)?;
        }
        // The aliases it names move with this transaction.
        let canonical = content_of("m.room.canonical_alias")?.filter(|c| c.as_object().is_some_and(|o| !o.is_empty()));
        if let Some(content) = &canonical {
            b.push(&creator, "m.room.canonical_alias", "", content.clone())?;
        }
        if escalate {
            b.push(&creator, "m.room.power_levels", "", JsonValue::Object(levels))?;
        }
        let new_room = NewRoom {
            room_id: new_room_id.to_string(),
            room_version: new_version.clone(),
            creator: creator.to_string(),
            created_ts: now_ms(),
        };
        let new_room_events = std::mem::take(&mut b.events);

        // The old room: tombstone, then (where the user's power allows)
        // no canonical alias and restricted power levels.
        let mut old = Builder {
            services: self,
            rules: old_rules.clone(),
            room_id: Some(room_id.to_owned()),
            state,
            prev: info
                .forward_extremities
                .iter()
                .map(|e| e.as_str().try_into())
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Internal(format!("stored extremity: {e}")))?,
            depth: info.max_depth,
            events: vec![],
        };
        old.push(
            &creator,
            "m.room.tombstone",
            "",
            json!({ "body": "This room has been replaced", "replacement_room": new_room_id }),
        )?;
        if canonical.is_some()
            && let Err(e) = old.push(&creator, "m.room.canonical_alias", "", json!({}))
        {
            tracing::debug!(error = %e, "old room keeps its canonical alias");
        }
        if let Some(restricted) = restricted_power_levels(content_of("m.room.power_levels")?)
            && let Err(e) = old.push(&creator, "m.room.power_levels", "", restricted)
        {
            tracing::debug!(error = %e, "old room keeps its power levels");
        }
        Ok(RoomUpgrade {
            old_room_id: room_id.to_string(),
            old_extremities: info.forward_extremities.clone(),
            old_room_events: old.events,
            new_room,
            new_room_events,
        })
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
