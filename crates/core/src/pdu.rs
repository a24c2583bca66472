//! Events as PDUs from day one: content hash, reference-hash event id,
//! server signature, `auth_events`, `prev_events`, `depth` (server-server
//! API, "PDUs" and "Room versions"), and the room version's authorization
//! rules through `ruma-state-res`.

use std::collections::BTreeMap;

use chancery_proto::limits::MAX_PDU_BYTES;
use chancery_proto::ruma::events::{StateEventType, TimelineEventType};
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::signatures::Ed25519KeyPair;
use chancery_proto::ruma::state_res;
use chancery_proto::ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    ServerName, UInt, UserId,
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

/// The room version's authorization rules for `pdu` against `state` (the
/// room state before it, keyed by type and state key).
pub fn authorize(rules: &RoomVersionRules, pdu: &Pdu, state: &BTreeMap<(StateEventType, String), Pdu>) -> Result<(), PduError> {
    let by_id: BTreeMap<&EventId, &Pdu> = state.values().map(|p| (p.event_id.as_ref(), p)).collect();
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| by_id.get(id).map(|p| (*p).clone()))
        .map_err(PduError::Forbidden)?;
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t, k| state.get(&(t.clone(), k.to_owned())).cloned())
        .map_err(PduError::Forbidden)
}
