//! `POST /createRoom` (client-server API "Creation"): the create event, the
//! creator's join, power levels, the canonical alias, preset state, initial
//! state, name, topic and invites, built in that order and stored in one
//! transaction together with the room's alias and directory listing.

use chancery_proto::limits::{MAX_CREATE_ROOM_INITIAL_STATE, MAX_CREATE_ROOM_INVITES};
use chancery_proto::ruma::events::room::guest_access::GuestAccess;
use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room::JoinRuleKind;
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, RoomVersionId};
use chancery_store::{NewRoom, RoomAddresses, RoomAlias, StoreError};
use serde_json::{Map, Value as JsonValue, json};

use super::{EncryptionByDefault, Rooms};
use crate::rooms::writer::{Builder, check_type_and_key};
use crate::rooms::{StateMap, rules_of, supported_room_version};
use crate::{AuthedUser, Error, tokens};

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

/// How one attempt at creating a room ended.
enum Attempt {
    Created(OwnedRoomId),
    /// A v12 room id is the hash of its create event: another room has
    /// it. The create event was stamped `create_ts`.
    IdTaken {
        create_ts: u64,
    },
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
            // MatrixRTC call membership (MSC3401, as Element Call sends it):
            // every member may join a call, in every room, not only in
            // rooms Element Web created as call rooms.
            "org.matrix.msc3401.call.member": 0,
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

/// The preset state of a room: join rule, history visibility and guest
/// access, with `initial_state` winning for the same (type, key).
fn preset_state(
    preset: Preset,
    encryption: EncryptionByDefault,
    initial_state: &[(String, String, JsonValue)],
    alias: Option<&RoomAliasId>,
) -> Result<Vec<(String, String, JsonValue)>, Error> {
    let (join_rule, guest_access) = match preset {
        Preset::PublicChat => (JoinRuleKind::Public, GuestAccess::Forbidden),
        Preset::PrivateChat | Preset::TrustedPrivateChat => (JoinRuleKind::Invite, GuestAccess::CanJoin),
    };
    let mut state = vec![
        ("m.room.join_rules".to_owned(), String::new(), json!({"join_rule": join_rule})),
        ("m.room.history_visibility".to_owned(), String::new(), json!({"history_visibility": HistoryVisibility::Shared})),
        ("m.room.guest_access".to_owned(), String::new(), json!({"guest_access": guest_access})),
    ];
    let encrypted = match encryption {
        EncryptionByDefault::All => true,
        EncryptionByDefault::Invite => preset != Preset::PublicChat,
        EncryptionByDefault::Off => false,
    };
    if encrypted {
        state.push(("m.room.encryption".to_owned(), String::new(), json!({"algorithm": MEGOLM_ALGORITHM})));
    }
    for (event_type, key, content) in initial_state {
        check_type_and_key(event_type, Some(key))?;
        if matches!(event_type.as_str(), "m.room.create" | "m.room.member" | "m.room.power_levels") {
            return Err(Error::InvalidParam(format!("{event_type} cannot be part of initial_state")));
        }
        if event_type == "m.room.canonical_alias" {
            check_initial_canonical_alias(content, alias)?;
        }
        state.retain(|(t, k, _)| !(t == event_type && k == key));
        state.push((event_type.clone(), key.clone(), content.clone()));
    }
    Ok(state)
}

/// The create event's content.
fn create_content(
    req: &CreateRoom,
    version: &RoomVersionId,
    creator: &OwnedUserId,
    rules: &RoomVersionRules,
) -> Result<Map<String, JsonValue>, Error> {
    let mut content = match req.creation_content.clone() {
        Some(JsonValue::Object(map)) => map,
        Some(_) => return Err(Error::BadJson("creation_content must be an object".into())),
        None => Map::new(),
    };
    content.insert("room_version".into(), json!(version));
    if !rules.authorization.use_room_create_sender {
        content.insert("creator".into(), json!(creator));
    }
    Ok(content)
}

/// The room-key algorithm of rooms encrypted by default.
const MEGOLM_ALGORITHM: &str = "m.megolm.v1.aes-sha2";

/// Every event of a new room, in the spec's order, on `b`.
#[allow(clippy::too_many_arguments)]
fn push_initial_events(
    b: &mut Builder<'_>,
    req: &CreateRoom,
    encryption: EncryptionByDefault,
    version: &RoomVersionId,
    creator: &OwnedUserId,
    creator_join: JsonValue,
    alias: Option<&RoomAliasId>,
    rules: &RoomVersionRules,
) -> Result<(), Error> {
    let preset = req.preset.unwrap_or(if req.public { Preset::PublicChat } else { Preset::PrivateChat });
    b.push(creator, "m.room.create", "", JsonValue::Object(create_content(req, version, creator, rules)?))?;
    b.push(creator, "m.room.member", creator.as_str(), creator_join)?;

    let list_creator = !rules.authorization.explicitly_privilege_room_creators;
    let mut power = default_power_levels(creator, list_creator, preset, &req.invite);
    match &req.power_level_content_override {
        Some(JsonValue::Object(over)) => power.extend(over.clone()),
        Some(_) => return Err(Error::BadJson("power_level_content_override must be an object".into())),
        None => {}
    }
    b.push(creator, "m.room.power_levels", "", JsonValue::Object(power))?;
    if let Some(alias) = alias {
        b.push(creator, "m.room.canonical_alias", "", json!({ "alias": alias }))?;
    }
    for (event_type, key, content) in preset_state(preset, encryption, &req.initial_state, alias)? {
        b.push(creator, &event_type, &key, content)?;
    }
    if let Some(name) = &req.name {
        b.push(creator, "m.room.name", "", json!({"name": name}))?;
    }
    if let Some(topic) = &req.topic {
        b.push(creator, "m.room.topic", "", json!({"topic": topic, "m.topic": [{"body": topic, "mimetype": "text/plain"}]}))?;
    }
    // Users of other servers are invited once the room exists (their
    // servers countersign their invites).
    for invitee in req.invite.iter().filter(|u| u.server_name() == creator.server_name()) {
        let mut content = json!({"membership": MembershipState::Invite});
        if req.is_direct {
            content["is_direct"] = json!(true);
        }
        b.push(creator, "m.room.member", invitee.as_str(), content)?;
    }
    Ok(())
}

impl Rooms {
    pub async fn create_room(&self, user: &AuthedUser, req: CreateRoom) -> Result<OwnedRoomId, Error> {
        self.deps.limiters.rooms_per_user.check_user(user)?;
        let (version, alias) = self.check_create(&req).await?;
        // A v12 room id is the hash of its create event: the same user
        // creating two identical rooms within one millisecond gets the same
        // id. The next attempt's events are stamped at least a millisecond
        // later, which gives another hash, hence another id (Synapse
        // likewise retries with a shifted timestamp).
        let mut not_before_ms = 0;
        for _ in 0..MAX_CREATE_ROOM_ATTEMPTS {
            match self.create_room_once(user, &req, &version, alias.as_ref(), not_before_ms).await? {
                Attempt::Created(room_id) => {
                    self.invite_remote_invitees(user, &room_id, &req).await;
                    return Ok(room_id);
                }
                Attempt::IdTaken { create_ts } => not_before_ms = create_ts + 1,
            }
        }
        Err(Error::LimitExceeded { retry_after_ms: 10 })
    }

    /// The invitees of other servers, once the room exists: each invite
    /// goes to its server to be countersigned. One that fails is logged;
    /// the room stays (as Synapse leaves it), and the user may invite
    /// again.
    async fn invite_remote_invitees(&self, user: &AuthedUser, room_id: &RoomId, req: &CreateRoom) {
        for invitee in req.invite.iter().filter(|u| u.server_name() != self.deps.config.server_name) {
            let mut content = json!({"membership": MembershipState::Invite});
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            if let Err(e) = self.invite_remote(user, room_id, invitee, content).await {
                tracing::warn!(room_id = %room_id, server = %invitee.server_name(), error = %e, "inviting a user of another server failed");
            }
        }
    }

    /// What can be refused before building anything: sizes, the version,
    /// invitees, and whether the alias is free (checked again, atomically,
    /// when the room is stored; this only saves building the events).
    async fn check_create(&self, req: &CreateRoom) -> Result<(RoomVersionId, Option<OwnedRoomAliasId>), Error> {
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
            None => self.deps.config.default_room_version.clone(),
        };
        for invitee in req.invite.iter().filter(|u| u.server_name() == self.deps.config.server_name) {
            self.ensure_local_user(invitee).await?;
        }
        let alias = req.room_alias_name.as_deref().map(|name| self.deps.directory.new_local_alias(name)).transpose()?;
        if let Some(alias) = &alias
            && self.deps.addresses.alias(alias.as_str()).await?.is_some()
        {
            return Err(Error::RoomInUse(format!("room alias {alias} already exists")));
        }
        Ok((version, alias))
    }

    async fn create_room_once(
        &self,
        user: &AuthedUser,
        req: &CreateRoom,
        version: &RoomVersionId,
        alias: Option<&OwnedRoomAliasId>,
        not_before_ms: u64,
    ) -> Result<Attempt, Error> {
        let rules = rules_of(version)?;
        let creator = user.user_id.clone();
        let room_id = (!rules.authorization.room_create_event_id_as_room_id).then(|| {
            let id = tokens::random_string(&*self.deps.entropy, tokens::ALNUM, 18);
            RoomId::parse(format!("!{id}:{}", self.deps.config.server_name)).expect("valid room id")
        });
        let creator_join = self.member_content(&creator, MembershipState::Join).await?;
        let mut b = self.deps.writer.builder(rules.clone(), room_id, StateMap::new(), vec![], 0).not_before(not_before_ms);
        push_initial_events(
            &mut b,
            req,
            self.deps.config.encryption_by_default,
            version,
            &creator,
            creator_join,
            alias.map(|a| &**a),
            &rules,
        )?;

        let room_id = b.room_id().cloned().expect("the create event sets the room id");
        let created_ts = self.deps.clock.now_ms();
        let room =
            NewRoom { room_id: room_id.to_string(), room_version: version.clone(), creator: creator.to_string(), created_ts };
        let aliases = alias
            .iter()
            .map(|alias| RoomAlias {
                alias: alias.to_string(),
                room_id: room_id.to_string(),
                creator: creator.to_string(),
                created_ts,
            })
            .collect();
        let addresses = RoomAddresses { aliases, publish: req.public };
        let events = b.take_events();
        let create_ts = events.first().map_or(0, |create| create.origin_server_ts);
        match self.deps.addresses.create_room_with_addresses(room, events, addresses).await {
            Ok(_) => {}
            Err(StoreError::RoomIdTaken) => return Ok(Attempt::IdTaken { create_ts }),
            // The spec's answer to a taken alias here (`PUT /directory/room`
            // answers 409).
            Err(StoreError::AliasTaken) => {
                let alias = alias.map(|a| a.to_string()).unwrap_or_default();
                return Err(Error::RoomInUse(format!("room alias {alias} already exists")));
            }
            Err(e) => return Err(e.into()),
        };
        // The creator and the invitees: none of them waits on the room yet.
        self.deps.notifier.user(creator.as_str());
        for invitee in &req.invite {
            self.deps.notifier.user(invitee.as_str());
        }
        tracing::info!(room_id = %room_id, "room created");
        Ok(Attempt::Created(room_id))
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
