//! Events as PDUs from day one: content hash, reference-hash event id,
//! server signature, `auth_events`, `prev_events`, `depth` (server-server
//! API, "PDUs" and "Room versions"), and the room version's authorization
//! rules through `ruma-state-res`.

use std::collections::BTreeMap;

use chancery_proto::limits::MAX_PDU_BYTES;
use chancery_proto::ruma::events::{StateEventType, TimelineEventType};
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::signatures::Ed25519KeyPair;
use chancery_proto::ruma::signatures::PublicKeyMap;
use chancery_proto::ruma::state_res;
use chancery_proto::ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName,
    OwnedUserId, RoomId, ServerName, UInt, UserId,
};
use serde::Deserialize;
use serde_json::Value as JsonValue;
use serde_json::value::RawValue as RawJsonValue;

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("event is larger than {MAX_PDU_BYTES} bytes")]
    TooLarge,
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
}

/// What a server wants to send, before it becomes a PDU.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// `None` only for the create event of a v12+ room (its id derives
    /// from the event).
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: JsonValue,
    /// For redactions: the target (put where the room version wants it).
    pub redacts: Option<OwnedEventId>,
}

/// A parsed, signed PDU with its event id.
#[derive(Debug, Clone, Deserialize)]
pub struct Pdu {
    #[serde(skip_deserializing, default = "placeholder_event_id")]
    pub event_id: OwnedEventId,
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    pub event_type: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: UInt,
    #[serde(skip)]
    pub json: String,
}

fn placeholder_event_id() -> OwnedEventId {
    EventId::parse("$placeholder").expect("valid event id literal")
}

impl Pdu {
    /// Parses a stored PDU (canonical JSON) whose id is known.
    pub fn from_json(event_id: &str, json: &str) -> Result<Pdu, PduError> {
        let mut pdu: Pdu = serde_json::from_str(json).map_err(|e| PduError::Invalid(e.to_string()))?;
        pdu.event_id = EventId::parse(event_id).map_err(|e| PduError::Invalid(e.to_string()))?;
        pdu.json = json.to_owned();
        Ok(pdu)
    }

    /// The room id, also for v12 create events (`!` + their reference hash).
    pub fn room_id_or_derived(&self) -> Result<OwnedRoomId, PduError> {
        match &self.room_id {
            Some(id) => Ok(id.clone()),
            None => RoomId::parse(format!("!{}", &self.event_id.as_str()[1..])).map_err(|e| PduError::Invalid(e.to_string())),
        }
    }

    /// `redacts` wherever the room version puts it (top level before v11,
    /// in `content` since).
    pub fn redacts_target(&self) -> Option<OwnedEventId> {
        if let Some(id) = &self.redacts {
            return Some(id.clone());
        }
        #[derive(Deserialize)]
        struct C {
            redacts: Option<OwnedEventId>,
        }
        serde_json::from_str::<C>(self.content.get()).ok().and_then(|c| c.redacts)
    }

    pub fn content_json(&self) -> JsonValue {
        serde_json::from_str(self.content.get()).unwrap_or(JsonValue::Null)
    }
}

impl state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.event_type
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// Which state an event must cite in `auth_events` (spec "Auth events
/// selection"), given the room version.
pub fn auth_types(draft: &EventDraft, rules: &RoomVersionRules) -> Result<Vec<(StateEventType, String)>, PduError> {
    let content = serde_json::value::to_raw_value(&draft.content).map_err(|e| PduError::Invalid(e.to_string()))?;
    state_res::auth_types_for_event(
        &TimelineEventType::from(draft.event_type.as_str()),
        &draft.sender,
        draft.state_key.as_deref(),
        &content,
        &rules.authorization,
    )
    .map_err(PduError::Invalid)
}

/// Builds, hashes and signs a PDU and computes its event id.
#[allow(clippy::too_many_arguments)]
pub fn build_pdu(
    draft: &EventDraft,
    rules: &RoomVersionRules,
    prev_events: &[OwnedEventId],
    auth_events: &[OwnedEventId],
    depth: u64,
    origin_server_ts: u64,
    origin: &ServerName,
    key: &Ed25519KeyPair,
) -> Result<Pdu, PduError> {
    let mut object = CanonicalJsonObject::new();
    let ids =
        |v: &[OwnedEventId]| CanonicalJsonValue::Array(v.iter().map(|e| CanonicalJsonValue::String(e.to_string())).collect());
    let content: CanonicalJsonValue = draft.content.clone().try_into().map_err(|e| PduError::Invalid(format!("content: {e}")))?;
    if !matches!(content, CanonicalJsonValue::Object(_)) {
        return Err(PduError::Invalid("content must be an object".into()));
    }
    object.insert("auth_events".into(), ids(auth_events));
    object.insert("content".into(), content);
    object.insert("depth".into(), CanonicalJsonValue::Integer(depth.try_into().map_err(|_| PduError::Invalid("depth".into()))?));
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(origin_server_ts.try_into().map_err(|_| PduError::Invalid("timestamp".into()))?),
    );
    object.insert("prev_events".into(), ids(prev_events));
    if let Some(room_id) = &draft.room_id {
        object.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
    }
    object.insert("sender".into(), CanonicalJsonValue::String(draft.sender.to_string()));
    object.insert("type".into(), CanonicalJsonValue::String(draft.event_type.clone()));
    if let Some(key) = &draft.state_key {
        object.insert("state_key".into(), CanonicalJsonValue::String(key.clone()));
    }
    if let Some(target) = &draft.redacts {
        // v11 moved `redacts` into content; older versions keep it at the
        // top level. Clients read either, so both are set where allowed.
        if !rules.redaction.content_field_redacts {
            object.insert("redacts".into(), CanonicalJsonValue::String(target.to_string()));
        }
    }
    let size_error = |e: chancery_proto::ruma::signatures::JsonError| match e {
        chancery_proto::ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        e => PduError::Invalid(e.to_string()),
    };
    chancery_proto::ruma::signatures::hash_and_sign_event(origin.as_str(), key, &mut object, &rules.redaction)
        .map_err(size_error)?;
    let json = CanonicalJsonValue::Object(object.clone()).to_string();
    if json.len() > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let hash = chancery_proto::ruma::signatures::reference_hash(&object, rules).map_err(size_error)?;
    Pdu::from_json(&format!("${hash}"), &json)
}

/// Completes an event template another server made (`make_join`,
/// `make_leave`): this server's `origin_server_ts`, content hash and
/// signature, then the event id.
pub fn sign_template(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    origin_server_ts: u64,
    origin: &ServerName,
    key: &Ed25519KeyPair,
) -> Result<Pdu, PduError> {
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(origin_server_ts.try_into().map_err(|_| PduError::Invalid("timestamp".into()))?),
    );
    // Templates may carry fields of older room versions.
    object.remove("signatures");
    object.remove("hashes");
    object.remove("unsigned");
    object.remove("event_id");
    chancery_proto::ruma::signatures::hash_and_sign_event(origin.as_str(), key, &mut object, &rules.redaction)
        .map_err(size_error)?;
    finish(object, rules)
}

/// The servers whose signatures a received PDU must carry (spec
/// "Validating hashes and signatures on received events").
pub fn servers_to_verify(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Vec<OwnedServerName>, PduError> {
    chancery_proto::ruma::signatures::required_server_signatures_to_verify_event(object, &rules.signatures)
        .map(|servers| servers.into_iter().collect())
        .map_err(|e| PduError::Invalid(e.to_string()))
}

/// Checks a PDU received from another server, steps 1–3 of the spec's
/// "Checks performed on receipt of a PDU": its format, the signatures of
/// the servers [`servers_to_verify`] names (with `keys`), and its content
/// hash. A PDU whose hash does not match is kept redacted, as the spec
/// says. Returns it with its event id (the reference hash).
pub fn check_received(object: CanonicalJsonObject, rules: &RoomVersionRules, keys: &PublicKeyMap) -> Result<Pdu, PduError> {
    use chancery_proto::ruma::signatures::{Verified, verify_event};
    let object =
        match verify_event(keys, &object, rules).map_err(|e| PduError::Forbidden(format!("signature check failed: {e}")))? {
            Verified::All => object,
            Verified::Signatures => chancery_proto::ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(|e| PduError::Invalid(e.to_string()))?,
        };
    finish(object, rules)
}

/// The canonical JSON of a signed event and its reference-hash id, parsed.
fn finish(object: CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Pdu, PduError> {
    let json = CanonicalJsonValue::Object(object.clone()).to_string();
    if json.len() > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let hash = chancery_proto::ruma::signatures::reference_hash(&object, rules).map_err(size_error)?;
    Pdu::from_json(&format!("${hash}"), &json)
}

fn size_error(e: chancery_proto::ruma::signatures::JsonError) -> PduError {
    match e {
        chancery_proto::ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        e => PduError::Invalid(e.to_string()),
    }
}

/// The room version's authorization rules for `pdu` against `state` (the
/// room state before it, keyed by type and state key), its `auth_events`
/// being part of that state (the single-server write path).
pub fn authorize(rules: &RoomVersionRules, pdu: &Pdu, state: &BTreeMap<(StateEventType, String), Pdu>) -> Result<(), PduError> {
    let by_id: BTreeMap<&EventId, &Pdu> = state.values().map(|p| (p.event_id.as_ref(), p)).collect();
    authorize_with(rules, pdu, |id| by_id.get(id).copied(), state)
}

/// The authorization rules for `pdu` with its `auth_events` looked up by
/// id and the state-dependent rules checked against `state`, which need
/// not contain them: the spec checks a received PDU against its auth
/// events, the state before it and the current state in turn (server-server
/// API, "Checks performed on receipt of a PDU"), and after a fork the
/// resolved state holds events other than the ones it cited.
pub fn authorize_with<'a>(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    auth_event: impl Fn(&EventId) -> Option<&'a Pdu>,
    state: &BTreeMap<(StateEventType, String), Pdu>,
) -> Result<(), PduError> {
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, auth_event).map_err(PduError::Forbidden)?;
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t, k| state.get(&(t.clone(), k.to_owned())))
        .map_err(PduError::Forbidden)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A room built event by event in memory, for the table tests of the
    //! authorization rules and of state resolution. `send` extends the
    //! linear tip; `send_on` extends any [`Tip`], so tests fork the DAG by
    //! cloning a tip and building on each copy.

    use chancery_proto::ruma::{RoomVersionId, server_name};
    use serde_json::json;

    use super::*;

    pub(crate) type State = BTreeMap<(StateEventType, String), Pdu>;

    /// One end of the DAG: the events a new event cites as `prev_events`
    /// and the state after them.
    #[derive(Clone)]
    pub(crate) struct Tip {
        pub prev: Vec<OwnedEventId>,
        pub state: State,
        pub depth: u64,
    }

    impl Tip {
        /// The state as a map of event ids, the form state resolution takes.
        pub(crate) fn state_ids(&self) -> crate::state_res::StateMap {
            self.state.iter().map(|(k, p)| (k.clone(), p.event_id.clone())).collect()
        }
    }

    pub(crate) struct Room {
        pub rules: RoomVersionRules,
        key: Ed25519KeyPair,
        pub room_id: Option<OwnedRoomId>,
        /// The tip `send` builds on.
        pub tip: Tip,
        /// Every event built, by id, on any branch.
        pub events: BTreeMap<OwnedEventId, Pdu>,
        /// `origin_server_ts` of the last event; each send moves it on.
        clock: u64,
    }

    impl Room {
        fn new(version: &str, clock: u64) -> Room {
            let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
            let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "test".into()).unwrap();
            let tip = Tip { prev: vec![], state: BTreeMap::new(), depth: 0 };
            Room { rules, key, room_id: None, tip, events: BTreeMap::new(), clock }
        }

        /// Tries to send on the linear tip; on success the event joins its
        /// state.
        pub(crate) fn send(
            &mut self,
            sender: &str,
            event_type: &str,
            state_key: Option<&str>,
            content: JsonValue,
        ) -> Result<OwnedEventId, PduError> {
            let mut tip = self.tip.clone();
            let id = self.send_on(&mut tip, sender, event_type, state_key, content)?;
            self.tip = tip;
            Ok(id)
        }

        /// Tries to send on `tip`, checked against its state.
        pub(crate) fn send_on(
            &mut self,
            tip: &mut Tip,
            sender: &str,
            event_type: &str,
            state_key: Option<&str>,
            content: JsonValue,
        ) -> Result<OwnedEventId, PduError> {
            self.build_on(tip, sender, event_type, state_key, content, None, true)
        }

        /// Like `send_on`, with a chosen `origin_server_ts`.
        pub(crate) fn send_at(
            &mut self,
            tip: &mut Tip,
            ts: u64,
            sender: &str,
            event_type: &str,
            state_key: Option<&str>,
            content: JsonValue,
        ) -> Result<OwnedEventId, PduError> {
            self.build_on(tip, sender, event_type, state_key, content, Some(ts), true)
        }

        /// Builds on `tip` without checking the rules, as a server that
        /// breaks them would: its branch then claims a state the rules do
        /// not allow, and state resolution must not take it.
        pub(crate) fn inject_on(
            &mut self,
            tip: &mut Tip,
            sender: &str,
            event_type: &str,
            state_key: Option<&str>,
            content: JsonValue,
        ) -> OwnedEventId {
            self.build_on(tip, sender, event_type, state_key, content, None, false).unwrap()
        }

        #[allow(clippy::too_many_arguments)]
        fn build_on(
            &mut self,
            tip: &mut Tip,
            sender: &str,
            event_type: &str,
            state_key: Option<&str>,
            content: JsonValue,
            ts: Option<u64>,
            check: bool,
        ) -> Result<OwnedEventId, PduError> {
            let draft = EventDraft {
                room_id: self.room_id.clone(),
                sender: UserId::parse(sender).unwrap(),
                event_type: event_type.into(),
                state_key: state_key.map(Into::into),
                content,
                redacts: None,
            };
            let auth: Vec<OwnedEventId> =
                auth_types(&draft, &self.rules)?.iter().filter_map(|k| tip.state.get(k)).map(|p| p.event_id.clone()).collect();
            let ts = ts.unwrap_or(self.clock + 1);
            let pdu = build_pdu(&draft, &self.rules, &tip.prev, &auth, tip.depth + 1, ts, server_name!("x"), &self.key)?;
            if check {
                authorize(&self.rules, &pdu, &tip.state)?;
            }
            self.clock = self.clock.max(ts);
            if self.room_id.is_none() {
                self.room_id = Some(pdu.room_id_or_derived()?);
            }
            tip.depth += 1;
            tip.prev = vec![pdu.event_id.clone()];
            if let Some(key) = &pdu.state_key {
                tip.state.insert((StateEventType::from(event_type), key.clone()), pdu.clone());
            }
            self.events.insert(pdu.event_id.clone(), pdu.clone());
            Ok(pdu.event_id)
        }

        /// The tip after `tips`, with `state` (resolved from theirs) as its
        /// state: the next event cites all of them.
        pub(crate) fn merge(&self, tips: &[&Tip], state: &crate::state_res::StateMap) -> Tip {
            let mut prev: Vec<OwnedEventId> = tips.iter().flat_map(|t| t.prev.iter().cloned()).collect();
            prev.sort();
            prev.dedup();
            let state = state.iter().map(|(k, id)| (k.clone(), self.events[id].clone())).collect();
            Tip { prev, state, depth: tips.iter().map(|t| t.depth).max().unwrap_or(0) }
        }

        pub(crate) fn create(version: &str) -> Room {
            Room::create_at(version, 1_000)
        }

        /// A room made by alice, whose events start at `clock`: the v12
        /// room id derives from the create event, so another clock makes
        /// another room.
        pub(crate) fn create_at(version: &str, clock: u64) -> Room {
            let mut room = Room::new(version, clock);
            if !room.rules.authorization.room_create_event_id_as_room_id {
                room.room_id = Some(RoomId::parse(format!("!test{clock}:x")).unwrap());
            }
            let mut content = json!({"room_version": version});
            if !room.rules.authorization.use_room_create_sender {
                content["creator"] = json!("@alice:x");
            }
            room.send("@alice:x", "m.room.create", Some(""), content).unwrap();
            room.send("@alice:x", "m.room.member", Some("@alice:x"), json!({"membership": "join"})).unwrap();
            room.send("@alice:x", "m.room.power_levels", Some(""), power(version, &[])).unwrap();
            room.send("@alice:x", "m.room.join_rules", Some(""), json!({"join_rule": "invite"})).unwrap();
            room
        }
    }

    /// Power levels with alice at 100 (before v12, where the creator is
    /// above every level and may not be listed) and `extra` users.
    pub(crate) fn power(version: &str, extra: &[(&str, i64)]) -> JsonValue {
        let mut users = json!({});
        if version != "12" {
            users["@alice:x"] = json!(100);
        }
        for (user, level) in extra {
            users[*user] = json!(level);
        }
        json!({"users": users, "state_default": 50, "ban": 50, "kick": 50, "invite": 0})
    }
}

#[cfg(test)]
mod tests {
    //! The authorization rules through our PDU builder, as tables: each row
    //! is an event someone tries to send and whether the rules accept it.
    //! Accepted events change the state the next rows are checked against.

    use serde_json::json;

    use super::testing::{Room, power};
    use super::*;

    type Row = (&'static str, &'static str, Option<&'static str>, JsonValue, bool);

    fn run(version: &str, rows: Vec<Row>) {
        let mut room = Room::create(version);
        for (n, (sender, event_type, key, content, allowed)) in rows.into_iter().enumerate() {
            let got = room.send(sender, event_type, key, content.clone());
            assert_eq!(got.is_ok(), allowed, "v{version} row {n}: {sender} {event_type} {key:?} {content} -> {got:?}");
        }
    }

    #[test]
    fn membership_and_power_rules_in_every_supported_version() {
        for version in ["10", "11", "12"] {
            run(
                version,
                vec![
                    // Not invited: bob cannot join an invite-only room, nor talk.
                    ("@bob:x", "m.room.member", Some("@bob:x"), json!({"membership": "join"}), false),
                    ("@bob:x", "m.room.message", None, json!({"body": "hi"}), false),
                    // Invited, he joins and talks, but cannot set state (50).
                    ("@alice:x", "m.room.member", Some("@bob:x"), json!({"membership": "invite"}), true),
                    ("@bob:x", "m.room.member", Some("@bob:x"), json!({"membership": "join"}), true),
                    ("@bob:x", "m.room.message", None, json!({"body": "hi"}), true),
                    ("@bob:x", "m.room.name", Some(""), json!({"name": "mine"}), false),
                    // Bob cannot ban alice; alice bans bob, whose join races in
                    // too late: banned users cannot rejoin.
                    ("@bob:x", "m.room.member", Some("@alice:x"), json!({"membership": "ban"}), false),
                    ("@alice:x", "m.room.member", Some("@bob:x"), json!({"membership": "ban"}), true),
                    ("@bob:x", "m.room.member", Some("@bob:x"), json!({"membership": "join"}), false),
                    ("@alice:x", "m.room.member", Some("@bob:x"), json!({"membership": "invite"}), false),
                    // Unban, invite, join; given power 50 bob may rename.
                    ("@alice:x", "m.room.member", Some("@bob:x"), json!({"membership": "leave"}), true),
                    ("@alice:x", "m.room.member", Some("@bob:x"), json!({"membership": "invite"}), true),
                    ("@bob:x", "m.room.member", Some("@bob:x"), json!({"membership": "join"}), true),
                    ("@alice:x", "m.room.power_levels", Some(""), power(version, &[("@bob:x", 50)]), true),
                    ("@bob:x", "m.room.name", Some(""), json!({"name": "ok now"}), true),
                    // Bob (50) cannot raise himself above his level.
                    ("@bob:x", "m.room.power_levels", Some(""), power(version, &[("@bob:x", 100)]), false),
                    // Public join rule: carol joins without invite.
                    ("@alice:x", "m.room.join_rules", Some(""), json!({"join_rule": "public"}), true),
                    ("@carol:x", "m.room.member", Some("@carol:x"), json!({"membership": "join"}), true),
                    // Carol cannot send as someone else's member event.
                    ("@carol:x", "m.room.member", Some("@dave:x"), json!({"membership": "join"}), false),
                ],
            );
        }
    }

    #[test]
    fn room_v12_creators_cannot_be_listed_or_demoted() {
        let mut room = Room::create("12");
        // v12: the creator has unlimited power and may not appear in users.
        let listed = room.send("@alice:x", "m.room.power_levels", Some(""), json!({"users": {"@alice:x": 100}}));
        assert!(listed.is_err(), "{listed:?}");
        assert!(room.room_id.as_ref().unwrap().server_name().is_none(), "v12 room ids carry no server name");
    }

    #[test]
    fn pdus_are_hashed_signed_and_sized() {
        let mut room = Room::create("11");
        let big = json!({"body": "x".repeat(70_000)});
        assert!(matches!(room.send("@alice:x", "m.room.message", None, big), Err(PduError::TooLarge)));
        let state = room.tip.state.get(&(StateEventType::RoomCreate, String::new())).unwrap();
        let value: JsonValue = serde_json::from_str(&state.json).unwrap();
        assert!(value["hashes"]["sha256"].is_string());
        assert!(value["signatures"]["x"]["ed25519:test"].is_string());
        assert!(state.event_id.as_str().starts_with('$') && !state.event_id.as_str().contains(':'));
        // A stored PDU parses back to the same event.
        let again = Pdu::from_json(state.event_id.as_str(), &state.json).unwrap();
        assert_eq!(again.sender, state.sender);
    }
}
