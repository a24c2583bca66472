//! The event formatter: stored PDUs as clients see them (client-server
//! API "Room event format"):
//! no hashes, signatures or DAG fields; `unsigned` with `age`, the sender's
//! own `transaction_id`, `redacted_because` with the content stripped by
//! the room version's redaction algorithm, and `m.relations`, the bundled
//! aggregations of the event's children.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chancery_proto::limits::MAX_BUNDLED_REFERENCES;
use chancery_proto::ruma::canonical_json::redact;
use chancery_proto::ruma::room_version_rules::RedactionRules;
use chancery_proto::ruma::{CanonicalJsonObject, UserId};
use chancery_store::{RelationStore, RoomStore, StoredEvent};
use serde_json::{Map, Value as JsonValue, json};

use super::{Visibility, rules_of};
use crate::clock::Clock;
use crate::{AuthedUser, Error};

/// Who looks at the events (for `transaction_id`).
#[derive(Debug, Clone)]
pub struct ClientEventOptions {
    pub user_id: String,
    pub device_id: String,
}

impl From<&AuthedUser> for ClientEventOptions {
    fn from(u: &AuthedUser) -> Self {
        Self { user_id: u.user_id.to_string(), device_id: u.device_id.clone() }
    }
}

const CLIENT_FIELDS: &[&str] = &["content", "event_id", "origin_server_ts", "room_id", "sender", "state_key", "type", "redacts"];

fn base(event: &StoredEvent, object: &Map<String, JsonValue>) -> Map<String, JsonValue> {
    let mut out = Map::new();
    for field in CLIENT_FIELDS {
        if let Some(v) = object.get(*field) {
            out.insert((*field).to_owned(), v.clone());
        }
    }
    out.insert("event_id".into(), json!(event.event_id));
    out.insert("room_id".into(), json!(event.room_id));
    // v11+ keep `redacts` in content; clients of older rooms read the top
    // level, so both are present.
    if event.event_type == "m.room.redaction"
        && !out.contains_key("redacts")
        && let Some(target) = object.get("content").and_then(|c| c.get("redacts"))
    {
        out.insert("redacts".into(), target.clone());
    }
    out
}

fn redacted_content(object: &Map<String, JsonValue>, rules: &RedactionRules) -> Result<JsonValue, Error> {
    let canonical: CanonicalJsonObject =
        serde_json::from_value(JsonValue::Object(object.clone())).map_err(|e| Error::Internal(e.to_string()))?;
    let redacted = redact(canonical, rules, None).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(redacted.get("content").map(|c| serde_json::to_value(c).unwrap_or(JsonValue::Null)).unwrap_or_else(|| json!({})))
}

/// Redaction rules of the rooms seen so far (a page is one room, so this
/// is one lookup per page).
#[derive(Default)]
struct RulesCache {
    rooms: HashMap<String, RedactionRules>,
}

impl RulesCache {
    async fn get(&mut self, store: &dyn RoomStore, room_id: &str) -> Result<RedactionRules, Error> {
        if let Some(rules) = self.rooms.get(room_id) {
            return Ok(rules.clone());
        }
        let info = store.room(room_id).await?.ok_or_else(|| Error::Internal("event of unknown room".into()))?;
        let rules = rules_of(&info.room_version)?.redaction;
        self.rooms.insert(room_id.to_owned(), rules.clone());
        Ok(rules)
    }
}

/// `unsigned["m.relations"]` per parent event id.
type Bundles = HashMap<String, Map<String, JsonValue>>;

fn attach(events: &[StoredEvent], formatted: &mut [JsonValue], bundles: &Bundles) {
    for (event, json) in events.iter().zip(formatted) {
        if let Some(relations) = bundles.get(&event.event_id) {
            json["unsigned"]["m.relations"] = JsonValue::Object(relations.clone());
        }
    }
}

/// What [`EventFormatter`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct EventFormatterDeps {
    pub rooms: Arc<dyn RoomStore>,
    pub relations: Arc<dyn RelationStore>,
    pub visibility: Arc<Visibility>,
    pub clock: Arc<dyn Clock>,
}

/// Formats events for clients.
pub struct EventFormatter {
    deps: EventFormatterDeps,
}

impl EventFormatter {
    pub fn new(deps: EventFormatterDeps) -> Self {
        Self { deps }
    }

    /// Formats events for a viewer, with the bundled aggregations of their
    /// children (spec "Aggregations of child events"): the latest edit
    /// (`m.replace`), the thread summary (`m.thread`) and the references
    /// (`m.reference`). Annotations are not bundled: since v1.7 the spec
    /// leaves counting them to clients. State events get no aggregations
    /// (spec: "State events do not currently receive bundled
    /// aggregations"). The children of a whole page are looked up
    /// together.
    pub async fn client_events(&self, events: &[StoredEvent], viewer: &ClientEventOptions) -> Result<Vec<JsonValue>, Error> {
        let mut rules = RulesCache::default();
        let mut out = self.format_events(events, viewer, &mut rules).await?;
        let bundles = self.bundles(events, viewer, &mut rules, true).await?;
        attach(events, &mut out, &bundles);
        Ok(out)
    }

    async fn format_events(
        &self,
        events: &[StoredEvent],
        viewer: &ClientEventOptions,
        rules: &mut RulesCache,
    ) -> Result<Vec<JsonValue>, Error> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let rules = rules.get(&*self.deps.rooms, &event.room_id).await?;
            out.push(self.client_event_with(event, viewer, &rules).await?);
        }
        Ok(out)
    }

    /// The aggregations of `events`' children. A thread's latest reply is
    /// served with its own edits and references (`with_threads` false for
    /// it: a thread reply relates to its root, so it cannot be a thread
    /// root itself, and the recursion ends there).
    async fn bundles(
        &self,
        events: &[StoredEvent],
        viewer: &ClientEventOptions,
        rules: &mut RulesCache,
        with_threads: bool,
    ) -> Result<Bundles, Error> {
        let mut parents: Vec<String> = events.iter().filter(|e| e.state_key.is_none()).map(|e| e.event_id.clone()).collect();
        parents.sort_unstable();
        parents.dedup();
        let mut bundles = Bundles::new();
        if parents.is_empty() {
            return Ok(bundles);
        }
        let mut found = self.deps.relations.bundled_aggregations(&parents, &viewer.user_id, MAX_BUNDLED_REFERENCES).await?;

        // An edit or a thread's latest reply the viewer may not see (sent
        // after they left, say) would show its content: not bundled.
        let children: Vec<StoredEvent> =
            found.edits.iter().map(|(_, edit)| edit.clone()).chain(found.threads.iter().map(|t| t.latest.clone())).collect();
        let visible = self.visible_ids(viewer, children).await?;
        found.threads.retain(|t| visible.contains(&t.latest.event_id));

        // Spec "Server-side aggregation of m.replace relationships": no
        // edit is bundled with a redacted original.
        let redacted: HashSet<&str> = events.iter().filter(|e| e.redacted_by.is_some()).map(|e| e.event_id.as_str()).collect();
        let (originals, edits): (Vec<String>, Vec<StoredEvent>) = found
            .edits
            .into_iter()
            .filter(|(original, edit)| !redacted.contains(original.as_str()) && visible.contains(&edit.event_id))
            .unzip();
        let formatted = self.format_events(&edits, viewer, rules).await?;
        for (original, edit) in originals.into_iter().zip(formatted) {
            bundles.entry(original).or_default().insert("m.replace".into(), edit);
        }

        if with_threads && !found.threads.is_empty() {
            let latest: Vec<StoredEvent> = found.threads.iter().map(|t| t.latest.clone()).collect();
            let mut latest_json = self.format_events(&latest, viewer, rules).await?;
            let inner = Box::pin(self.bundles(&latest, viewer, rules, false)).await?;
            attach(&latest, &mut latest_json, &inner);
            for (thread, latest_event) in found.threads.iter().zip(latest_json) {
                bundles.entry(thread.root.clone()).or_default().insert(
                    "m.thread".into(),
                    json!({
                        "latest_event": latest_event,
                        "count": thread.count,
                        "current_user_participated": thread.participated,
                    }),
                );
            }
        }

        for (parent, child) in found.references {
            let chunk = bundles
                .entry(parent)
                .or_default()
                .entry("m.reference")
                .or_insert_with(|| json!({ "chunk": [] }))
                .get_mut("chunk")
                .and_then(JsonValue::as_array_mut);
            if let Some(chunk) = chunk {
                chunk.push(json!({ "event_id": child }));
            }
        }
        Ok(bundles)
    }

    /// The ids of `events` (of any rooms) the viewer may see.
    async fn visible_ids(&self, viewer: &ClientEventOptions, events: Vec<StoredEvent>) -> Result<HashSet<String>, Error> {
        if events.is_empty() {
            return Ok(HashSet::new());
        }
        let user_id = UserId::parse(viewer.user_id.as_str()).map_err(|e| Error::Internal(format!("viewer id: {e}")))?;
        let mut by_room: HashMap<String, Vec<StoredEvent>> = HashMap::new();
        for event in events {
            by_room.entry(event.room_id.clone()).or_default().push(event);
        }
        let mut visible = HashSet::new();
        for (room_id, events) in by_room {
            visible
                .extend(self.deps.visibility.visible_events(&user_id, &room_id, events).await?.into_iter().map(|e| e.event_id));
        }
        Ok(visible)
    }

    async fn client_event_with(
        &self,
        event: &StoredEvent,
        viewer: &ClientEventOptions,
        rules: &RedactionRules,
    ) -> Result<JsonValue, Error> {
        let JsonValue::Object(object) =
            serde_json::from_str(&event.json).map_err(|e| Error::Internal(format!("stored event: {e}")))?
        else {
            return Err(Error::Internal("stored event is not an object".into()));
        };
        let mut out = base(event, &object);
        let mut unsigned = Map::new();
        unsigned.insert("age".into(), json!(self.deps.clock.now_ms().saturating_sub(event.origin_server_ts)));
        if let Some(txn) = &event.txn
            && txn.user_id == viewer.user_id
            && txn.device_id == viewer.device_id
        {
            unsigned.insert("transaction_id".into(), json!(txn.txn_id));
        }
        if let Some(redaction_id) = &event.redacted_by {
            out.insert("content".into(), redacted_content(&object, rules)?);
            if let Some(redaction) = self.deps.rooms.event(redaction_id).await?
                && let Ok(JsonValue::Object(r)) = serde_json::from_str::<JsonValue>(&redaction.json)
            {
                unsigned.insert("redacted_because".into(), JsonValue::Object(base(&redaction, &r)));
            }
        }
        out.insert("unsigned".into(), JsonValue::Object(unsigned));
        Ok(JsonValue::Object(out))
    }
}
