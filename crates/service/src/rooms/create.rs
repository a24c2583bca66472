//! `POST /createRoom` (client-server API "Creation"): the create event, the
//! creator's join, power levels, the canonical alias, preset state, initial
//! state, name, topic and invites, built in that order and stored in one
//! transaction together with the room's alias and directory listing.

use chancery_core::pdu::{self, EventDraft};
use chancery_proto::limits::{MAX_CREATE_ROOM_INITIAL_STATE, MAX_CREATE_ROOM_INVITES};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId};
use chancery_store::{NewEvent, NewRoom, RoomAddresses, RoomAlias, StoreError};
use serde_json::{Map, Value as JsonValue, json};

use super::send::new_event;
use super::{StateMap, rules_of, supported_room_version};
use crate::{AuthedUser, Error, Services, now_ms, tokens};

const ROOM_ID_COLLISION: &str = "room id collision";
const MAX_CREATE_ROOM_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

#[derive(Debug, Clone, Default)]
pub struct CreateRoom {
    pub preset: Option<Preset>,
    pub public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    /// (type, state_key, content)
    pub initial_state: Vec<(String, String, JsonValue)>,
    pub power_level_content_override: Option<JsonValue>,
    pub room_version: Option<String>,
    pub creation_content: Option<JsonValue>,
    pub is_direct: bool,
    /// Localpart of an alias of this server to create for the room, which
    /// also becomes its canonical alias.
    pub room_alias_name: Option<String>,
}

/// Builds state events one after the other, each on the one before,
/// checking each against the state so far exactly as a later event would
/// be: a new room's first events, or (upgrades) events of an existing room
/// started from its current state and extremities.
pub(crate) struct Builder<'a> {
    pub(crate) services: &'a Services,
    pub(crate) rules: chancery_proto::ruma::room_version_rules::RoomVersionRules,
    pub(crate) room_id: Option<OwnedRoomId>,
    pub(crate) state: StateMap,
    pub(crate) prev: Vec<OwnedEventId>,
    pub(crate) depth: u64,
    pub(crate) events: Vec<NewEvent>,
}

impl Builder<'_> {
    /// On error (e.g. the auth rules refuse it) nothing is added.
    pub(crate) fn push(
        &mut self,
        sender: &OwnedUserId,
        event_type: &str,
        state_key: &str,
        content: JsonValue,
    ) -> Result<(), Error> {
        let draft = EventDraft {
            room_id: self.room_id.clone(),
            sender: sender.clone(),
            event_type: event_type.to_owned(),
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
        };
        let auth_events: Vec<OwnedEventId> =
            pdu::auth_types(&draft, &self.rules)?.iter().filter_map(|k| self.state.get(k)).map(|p| p.event_id.clone()).collect();
        let depth = self.depth + 1;
        let built = pdu::build_pdu(
            &draft,
            &self.rules,
            &self.prev,
            &auth_events,
            depth,
            now_ms(),
            self.services.server_name(),
            self.services.signing_key(),
        )?;
        pdu::authorize(&self.rules, &built, &self.state)?;
        self.depth = depth;
        if self.room_id.is_none() {
            self.room_id = Some(built.room_id_or_derived()?);
        }
        let room_id = self.room_id.clone().expect("set above");
        self.events.push(new_event(&built, &room_id, None, Vec::new()));
        self.prev = vec![built.event_id.clone()];
        self.state.insert((StateEventType::from(event_type), state_key.to_owned()), built);
        Ok(())
    }
}

fn default_power_levels(
    creator: &OwnedUserId,
    list_creator: bool,
    preset: Preset,
    invitees: &[OwnedUserId],
) -> Map<String, JsonValue> {
    let mut users = Map::new();
    if list_creator {
        users.insert(creator.to_string(), json!(100));
    }
    if preset == Preset::TrustedPrivateChat {
        for invitee in invitees {
            users.insert(invitee.to_string(), json!(100));
        }
    }
    let JsonValue::Object(map) = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if preset == Preset::PublicChat { 50 } else { 0 },
        "notifications": { "room": 50 },
    }) else {
        unreachable!("object literal")
    };
    map
}

impl Services {
    pub async fn create_room(&self, user: &AuthedUser, req: CreateRoom) -> Result<OwnedRoomId, Error> {
        // A v12 room id is the hash of its create event: the same user
        // creating two identical rooms within one millisecond gets the same
        // id. The next millisecond gives another timestamp, hence another id
        // (Synapse likewise retries with a shifted timestamp).
        for _ in 0..MAX_CREATE_ROOM_ATTEMPTS {
            match self.create_room_once(user, req.clone()).await {
                Err(Error::Internal(detail)) if detail == ROOM_ID_COLLISION => {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                other => return other,
            }
        }
        Err(Error::LimitExceeded { retry_after_ms: 10 })
    }

    async fn create_room_once(&self, user: &AuthedUser, req: CreateRoom) -> Result<OwnedRoomId, Error> {
        if req.invite.len() > MAX_CREATE_ROOM_INVITES {
            return Err(Error::InvalidParam(format!("at most {MAX_CREATE_ROOM_INVITES} invites")));
        }
        if req.initial_state.len() > MAX_CREATE_ROOM_INITIAL_STATE {
            return Err(Error::InvalidParam(format!("at most {MAX_CREATE_ROOM_INITIAL_STATE} initial state events")));
        }
        let version = match &req.room_version {
            Some(requested) => {
                supported_room_version(requested).ok_or_else(|| Error::UnsupportedRoomVersion(requested.clone()))?
            }
            None => self.config().default_room_version.clone(),
        };
        for invitee in &req.invite {
            self.ensure_local_user(invitee).await?;
        }
        let alias = req.room_alias_name.as_deref().map(|name| self.new_room_alias(name)).transpose()?;
        if let Some(alias) = &alias
            && self.store().alias(alias.as_str()).await?.is_some()
        {
            // Checked again, atomically, when the room is stored; this only
            // saves building the events.
            return Err(Error::RoomInUse(format!("room alias {alias} already exists")));
        }
        let rules = rules_of(&version)?;
        let creator = user.user_id.clone();
        let preset = req.preset.unwrap_or(if req.public { Preset::PublicChat } else { Preset::PrivateChat });

        let mut create_content = match req.creation_content.clone() {
            Some(JsonValue::Object(map)) => map,
            Some(_) => return Err(Error::BadJson("creation_content must be an object".into())),
            None => Map::new(),
        };
        create_content.insert("room_version".into(), json!(version));
        if !rules.authorization.use_room_create_sender {
            create_content.insert("creator".into(), json!(creator));
        }

        let derived_id = rules.authorization.room_create_event_id_as_room_id;
        let room_id = (!derived_id).then(|| {
            RoomId::parse(format!("!{}:{}", tokens::random_string(tokens::ALNUM, 18), self.server_name())).expect("valid room id")
        });
        let mut b = Builder {
            services: self,
            rules: rules.clone(),
            room_id,
            state: StateMap::new(),
            prev: vec![],
            depth: 0,
            events: vec![],
        };
        b.push(&creator, "m.room.create", "", JsonValue::Object(create_content))?;

        let profile = self.store().profile(creator.as_str()).await?;
        let mut join = json!({"membership": "join"});
        for field in ["displayname", "avatar_url"] {
            if let Some(v) = profile.get(field) {
                join[field] = v.clone();
            }
        }
        b.push(&creator, "m.room.member", creator.as_str(), join)?;

        let list_creator = !rules.authorization.explicitly_privilege_room_creators;
        let mut power = default_power_levels(&creator, list_creator, preset, &req.invite);
        match &req.power_level_content_override {
            Some(JsonValue::Object(over)) => power.extend(over.clone()),
            Some(_) => return Err(Error::BadJson("power_level_content_override must be an object".into())),
            None => {}
        }
        b.push(&creator, "m.room.power_levels", "", JsonValue::Object(power))?;
        if let Some(alias) = &alias {
            b.push(&creator, "m.room.canonical_alias", "", json!({ "alias": alias }))?;
        }

        let (join_rule, guest_access) = match preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        let mut preset_state = vec![
            ("m.room.join_rules".to_owned(), String::new(), json!({"join_rule": join_rule})),
            ("m.room.history_visibility".to_owned(), String::new(), json!({"history_visibility": "shared"})),
            ("m.room.guest_access".to_owned(), String::new(), json!({"guest_access": guest_access})),
        ];
        // initial_state wins over the preset for the same (type, key).
        for (event_type, key, content) in &req.initial_state {
            super::send::check_type_and_key(event_type, Some(key))?;
            if matches!(event_type.as_str(), "m.room.create" | "m.room.member" | "m.room.power_levels") {
                return Err(Error::InvalidParam(format!("{event_type} cannot be part of initial_state")));
            }
            if event_type == "m.room.canonical_alias" {
                check_initial_canonical_alias(content, alias.as_deref())?;
            }
            preset_state.retain(|(t, k, _)| !(t == event_type && k == key));
            preset_state.push((event_type.clone(), key.clone(), content.clone()));
        }
        for (event_type, key, content) in preset_state {
            b.push(&creator, &event_type, &key, content)?;
        }
        if let Some(name) = &req.name {
            b.push(&creator, "m.room.name", "", json!({"name": name}))?;
        }
        if let Some(topic) = &req.topic {
            b.push(
                &creator,
                "m.room.topic",
                "",
                json!({"topic": topic, "m.topic": [{"body": topic, "mimetype": "text/plain"}]}),
            )?;
        }
        for invitee in &req.invite {
            let mut content = json!({"membership": "invite"});
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            b.push(&creator, "m.room.member", invitee.as_str(), content)?;
        }

        let room_id = b.room_id.clone().expect("create event sets the room id");
        let room =
            NewRoom { room_id: room_id.to_string(), room_version: version, creator: creator.to_string(), created_ts: now_ms() };
        let aliases = alias
            .iter()
            .map(|alias| RoomAlias {
                alias: alias.to_string(),
                room_id: room_id.to_string(),
                creator: creator.to_string(),
                created_ts: room.created_ts,
            })
            .collect();
        let addresses = RoomAddresses { aliases, publish: req.public };
        match self.store().create_room_with_addresses(room, b.events, addresses).await {
            Ok(_) => {}
            Err(StoreError::RoomIdTaken) => return Err(Error::Internal(ROOM_ID_COLLISION.into())),
            Err(StoreError::AliasTaken) => {
                let alias = alias.map(|a| a.to_string()).unwrap_or_default();
                return Err(Error::RoomInUse(format!("room alias {alias} already exists")));
            }
            Err(e) => return Err(e.into()),
        };
        // The creator and the invitees: none of them waits on the room yet.
        self.inner.wakeups.user(creator.as_str());
        for invitee in &req.invite {
            self.inner.wakeups.user(invitee.as_str());
        }
        tracing::info!(room_id = %room_id, "room created");
        Ok(room_id)
    }

    /// `#name:our.server` for `room_alias_name`.
    fn new_room_alias(&self, name: &str) -> Result<chancery_proto::ruma::OwnedRoomAliasId, Error> {
        let alias = RoomAliasId::parse(format!("#{name}:{}", self.server_name()))
            .map_err(|e| Error::InvalidParam(format!("invalid room_alias_name: {e}")))?;
        self.check_new_local_alias(&alias)?;
        Ok(alias)
    }

    /// Invites and other user-targeted actions only reach local accounts
    /// until federation exists.
    pub(crate) async fn ensure_local_user(&self, user_id: &chancery_proto::ruma::UserId) -> Result<(), Error> {
        if user_id.server_name() != self.server_name() {
            return Err(Error::Forbidden(format!(
                "{user_id} is on another server; federation is not available on this server yet"
            )));
        }
        match self.store().account(user_id.as_str()).await? {
            Some(a) if !a.deactivated => Ok(()),
            _ => Err(Error::NotFound(format!("{user_id} does not exist"))),
        }
    }
}

/// No alias can point to a room that does not exist yet, except the one
/// created with it: an `m.room.canonical_alias` of `initial_state` may only
/// name that one (spec: `M_BAD_ALIAS` otherwise).
fn check_initial_canonical_alias(content: &JsonValue, created: Option<&RoomAliasId>) -> Result<(), Error> {
    let mut named: Vec<&JsonValue> = Vec::new();
    match content.get("alias") {
        None | Some(JsonValue::Null) => {}
        Some(JsonValue::String(a)) if a.is_empty() => {}
        Some(a @ JsonValue::String(_)) => named.push(a),
        Some(_) => return Err(Error::InvalidParam("alias must be a string".into())),
    }
    match content.get("alt_aliases") {
        None => {}
        Some(JsonValue::Array(list)) => named.extend(list),
        Some(_) => return Err(Error::InvalidParam("alt_aliases must be a list".into())),
    }
    for alias in named {
        let alias = alias.as_str().ok_or_else(|| Error::InvalidParam("aliases must be strings".into()))?;
        let parsed =
            RoomAliasId::parse(alias).map_err(|e| Error::InvalidParam(format!("{alias:?} is not a valid room alias: {e}")))?;
        if created != Some(&*parsed) {
            return Err(Error::BadAlias(format!("the alias {alias} does not point to this room")));
        }
    }
    Ok(())
}
