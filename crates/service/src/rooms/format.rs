//! The event formatter: stored PDUs as clients see them (client-server
//! API "Room event format"):
//! no hashes, signatures or DAG fields; `unsigned` with `age`, the sender's
//! own `transaction_id`, `redacted_because` with the content stripped by
//! the room version's redaction algorithm, and `m.relations`, the bundled
//! aggregations of the event's children.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chancery_proto::limits::MAX_BUNDLED_REFERENCES;
use chancery_proto::ruma::canonical_json::redact;
use chancery_proto::ruma::room_version_rules::RedactionRules;
use chancery_proto::ruma::{CanonicalJsonObject, UserId};
use chancery_store::{BundledAggregations, RelationStore, RoomStore, StoredEvent, ThreadSummary};
use serde_json::{Map, Value as JsonValue, json};

use super::visibility::ReadAccess;
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

/// The fields of a stored PDU a client sees ([`CLIENT_FIELDS`] but the
/// ids, which the stored event carries); the rest (hashes, signatures,
/// DAG fields) is skipped unparsed.
#[derive(serde::Deserialize)]
struct Shown {
    content: Option<JsonValue>,
    origin_server_ts: Option<JsonValue>,
    sender: Option<JsonValue>,
    state_key: Option<JsonValue>,
    #[serde(rename = "type")]
    kind: Option<JsonValue>,
    redacts: Option<JsonValue>,
}

/// [`base`] of an event that was not redacted, read without building the
/// whole PDU.
fn shown(event: &StoredEvent) -> Result<Map<String, JsonValue>, Error> {
    let shown: Shown = serde_json::from_str(&event.json).map_err(|e| Error::Internal(format!("stored event: {e}")))?;
    let redacts = shown.redacts.or_else(|| {
        (event.event_type == "m.room.redaction").then(|| shown.content.as_ref().and_then(|c| c.get("redacts")).cloned()).flatten()
    });
    let mut out = Map::new();
    let fields = [
        ("content", shown.content),
        ("origin_server_ts", shown.origin_server_ts),
        ("sender", shown.sender),
        ("state_key", shown.state_key),
        ("type", shown.kind),
        ("redacts", redacts),
    ];
    for (field, value) in fields {
        if let Some(value) = value {
            out.insert(field.to_owned(), value);
        }
    }
    out.insert("event_id".into(), json!(event.event_id));
    out.insert("room_id".into(), json!(event.room_id));
    Ok(out)
}

pub(crate) fn redacted_content(object: &Map<String, JsonValue>, rules: &RedactionRules) -> Result<JsonValue, Error> {
    let canonical: CanonicalJsonObject =
        serde_json::from_value(JsonValue::Object(object.clone())).map_err(|e| Error::Internal(e.to_string()))?;
    let redacted = redact(canonical, rules, None).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(redacted.get("content").map(|c| serde_json::to_value(c).unwrap_or(JsonValue::Null)).unwrap_or_else(|| json!({})))
}

/// Redaction rules by room. A room's version never changes, so they are
/// kept for the life of the process (on every node alike), bounded: the
/// cache is emptied when full. A sliding-sync answer looked each room up
/// twice per room otherwise.
#[derive(Default)]
struct RulesCache {
    rooms: std::sync::Mutex<HashMap<String, RedactionRules>>,
}

/// Rooms whose rules [`RulesCache`] holds at most.
const RULES_CACHED: usize = 10_000;

impl RulesCache {
    async fn get(&self, store: &dyn RoomStore, room_id: &str) -> Result<RedactionRules, Error> {
        if let Some(rules) = self.rooms.lock().unwrap_or_else(|p| p.into_inner()).get(room_id) {
            return Ok(rules.clone());
        }
        let info = store.room(room_id).await?.ok_or_else(|| Error::Internal("event of unknown room".into()))?;
        let rules = rules_of(&info.room_version)?.redaction;
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.len() >= RULES_CACHED {
            rooms.clear();
        }
        rooms.insert(room_id.to_owned(), rules.clone());
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

/// The viewer's read access to the rooms of a page's children and
/// redactions, read once per page.
struct Judge<'v> {
    user_id: &'v str,
    rooms: BTreeMap<String, ReadAccess>,
    /// For rooms not read (nothing of them to judge): reads nothing.
    nothing: ReadAccess,
}

impl Judge<'_> {
    fn access(&self, room_id: &str) -> &ReadAccess {
        self.rooms.get(room_id).unwrap_or(&self.nothing)
    }

    fn may_see(&self, event: &StoredEvent) -> bool {
        self.access(&event.room_id).may_see(self.user_id, event)
    }

    /// What of `found` (the children of `parents`) the viewer may see: an
    /// edit or a thread's latest reply they may not see would show its
    /// content, a reference its existence. A thread whose latest reply is
    /// hidden is left out rather than shown with an older one. Spec
    /// "Server-side aggregation of m.replace relationships": no edit is
    /// bundled with a redacted original.
    fn visible_children(&self, mut found: BundledAggregations, parents: &[StoredEvent]) -> BundledAggregations {
        let by_id: HashMap<&str, &StoredEvent> = parents.iter().map(|e| (e.event_id.as_str(), e)).collect();
        found.edits.retain(|(original, edit)| {
            by_id.get(original.as_str()).is_some_and(|o| o.redacted_by.is_none()) && self.may_see(edit)
        });
        found.threads.retain(|t| self.may_see(&t.latest));
        // References are known by id and position only, which suffices.
        let positions = &found.reference_positions;
        found.references.retain(|(parent, child)| match (by_id.get(parent.as_str()), positions.get(child)) {
            (Some(parent), Some(pos)) => self.access(&parent.room_id).may_see_at(*pos),
            _ => false,
        });
        found
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
    rules: RulesCache,
}

impl EventFormatter {
    pub fn new(deps: EventFormatterDeps) -> Self {
        Self { deps, rules: RulesCache::default() }
    }

    /// Formats events for a viewer, with the bundled aggregations of their
    /// children (spec "Aggregations of child events"): the latest edit
    /// (`m.replace`), the thread summary (`m.thread`) and the references
    /// (`m.reference`). Annotations are not bundled: since v1.7 the spec
    /// leaves counting them to clients. State events get no aggregations
    /// (spec: "State events do not currently receive bundled
    /// aggregations"). The children of a whole page are looked up
    /// together.
    ///
    /// What is bundled follows history visibility as the events do: a
    /// redaction, edit, latest reply or reference the viewer may not see
    /// (sent after they left, say) is not shown, and a thread's count
    /// counts only the replies they may see. Everything these decisions
    /// look at is fetched first, so one read of the visibility spans
    /// decides them all.
    pub async fn client_events(&self, events: &[StoredEvent], viewer: &ClientEventOptions) -> Result<Vec<JsonValue>, Error> {
        let redactions = self.redactions_of(events).await?;
        let page = self.aggregations_of(events, viewer).await?;
        // A thread's latest reply is served with its own edits and
        // references; a reply relates to its root, so it cannot be a
        // thread root itself, and the nesting ends there.
        let latest: Vec<StoredEvent> = page.threads.iter().map(|t| t.latest.clone()).collect();
        let mut of_latest = self.aggregations_of(&latest, viewer).await?;
        of_latest.threads.clear();
        let judge = self.judge(viewer, events, &redactions, &page, &latest, &of_latest).await?;

        // The content of a redacted event stays stripped whoever looks;
        // the redaction itself is shown only to who may see it.
        let redactions: HashMap<String, StoredEvent> =
            redactions.into_iter().filter(|r| judge.may_see(r)).map(|r| (r.event_id.clone(), r)).collect();
        let mut out = self.format_events(events, viewer, &redactions).await?;
        let mut page = judge.visible_children(page, events);
        self.count_visible_replies(&mut page.threads, events, &judge).await?;
        let latest: Vec<StoredEvent> = page.threads.iter().map(|t| t.latest.clone()).collect();
        let of_latest = judge.visible_children(of_latest, &latest);
        // Bundled children are never redacted (a redaction breaks the
        // relation), so they need no redactions.
        let mut latest_json = self.format_events(&latest, viewer, &HashMap::new()).await?;
        let latest_bundles = self.bundles(of_latest, Vec::new(), viewer).await?;
        attach(&latest, &mut latest_json, &latest_bundles);
        let bundles = self.bundles(page, latest_json, viewer).await?;
        attach(events, &mut out, &bundles);
        Ok(out)
    }

    /// The redaction events of the redacted ones among `events`.
    async fn redactions_of(&self, events: &[StoredEvent]) -> Result<Vec<StoredEvent>, Error> {
        let mut redactions = Vec::new();
        for redaction_id in events.iter().filter_map(|e| e.redacted_by.as_deref()) {
            redactions.extend(self.deps.rooms.event(redaction_id).await?);
        }
        Ok(redactions)
    }

    /// The children of `events` as stored, whoever may see them.
    async fn aggregations_of(&self, events: &[StoredEvent], viewer: &ClientEventOptions) -> Result<BundledAggregations, Error> {
        let mut parents: Vec<String> = events.iter().filter(|e| e.state_key.is_none()).map(|e| e.event_id.clone()).collect();
        parents.sort_unstable();
        parents.dedup();
        if parents.is_empty() {
            return Ok(BundledAggregations::default());
        }
        Ok(self.deps.relations.bundled_aggregations(&parents, &viewer.user_id, MAX_BUNDLED_REFERENCES).await?)
    }

    /// The viewer's read access to the rooms of everything a page shows
    /// beside its events: one read of the spans over the positions from
    /// the lowest to the highest of them (none if there is nothing).
    async fn judge<'v>(
        &self,
        viewer: &'v ClientEventOptions,
        events: &[StoredEvent],
        redactions: &[StoredEvent],
        page: &BundledAggregations,
        latest: &[StoredEvent],
        of_latest: &BundledAggregations,
    ) -> Result<Judge<'v>, Error> {
        let mut positions: Vec<(&str, u64)> = redactions.iter().map(|r| (r.room_id.as_str(), r.stream_pos)).collect();
        for (parents, found) in [(events, page), (latest, of_latest)] {
            let room_of: HashMap<&str, &StoredEvent> = parents.iter().map(|e| (e.event_id.as_str(), e)).collect();
            positions.extend(found.edits.iter().map(|(_, edit)| (edit.room_id.as_str(), edit.stream_pos)));
            for thread in &found.threads {
                positions.push((thread.latest.room_id.as_str(), thread.latest.stream_pos));
                // From the root on: its count depends on every reply's.
                positions.extend(room_of.get(thread.root.as_str()).map(|root| (root.room_id.as_str(), root.stream_pos)));
            }
            for (parent, child) in &found.references {
                if let (Some(parent), Some(pos)) = (room_of.get(parent.as_str()), found.reference_positions.get(child)) {
                    positions.push((parent.room_id.as_str(), *pos));
                }
            }
        }
        let mut judge = Judge { user_id: &viewer.user_id, rooms: BTreeMap::new(), nothing: ReadAccess::default() };
        let (Some(lowest), Some(highest)) = (positions.iter().map(|p| p.1).min(), positions.iter().map(|p| p.1).max()) else {
            return Ok(judge);
        };
        let mut rooms: Vec<String> = positions.iter().map(|p| p.0.to_owned()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let user_id = UserId::parse(viewer.user_id.as_str()).map_err(|e| Error::Internal(format!("viewer id: {e}")))?;
        // From one before the lowest: a visibility change is judged by the
        // visibility before it too.
        judge.rooms = self.deps.visibility.read_access(&user_id, &rooms, lowest.saturating_sub(1), highest).await?;
        Ok(judge)
    }

    /// Thread counts of the replies the viewer may see. Usually they may
    /// see every position from the root to the latest reply, and the
    /// stored count is theirs; otherwise (they left and came back to a
    /// `joined` room, say) the visible replies are counted, in one
    /// statement per room, only then.
    async fn count_visible_replies(
        &self,
        threads: &mut [ThreadSummary],
        roots: &[StoredEvent],
        judge: &Judge<'_>,
    ) -> Result<(), Error> {
        let root_pos: HashMap<&str, u64> = roots.iter().map(|e| (e.event_id.as_str(), e.stream_pos)).collect();
        let mut recount: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for thread in threads.iter() {
            let room_id = &thread.latest.room_id;
            let root = root_pos.get(thread.root.as_str()).copied().unwrap_or(0);
            if !judge.access(room_id).reads_all_between(root, thread.latest.stream_pos) {
                recount.entry(room_id.clone()).or_default().push(thread.root.clone());
            }
        }
        for (room_id, roots) in recount {
            let counts: HashMap<String, u64> = self
                .deps
                .relations
                .thread_reply_counts(&roots, &judge.access(&room_id).seen_ranges())
                .await?
                .into_iter()
                .collect();
            for thread in threads.iter_mut().filter(|t| t.latest.room_id == room_id) {
                if let Some(count) = counts.get(&thread.root) {
                    thread.count = *count;
                }
            }
        }
        Ok(())
    }

    async fn format_events(
        &self,
        events: &[StoredEvent],
        viewer: &ClientEventOptions,
        redactions: &HashMap<String, StoredEvent>,
    ) -> Result<Vec<JsonValue>, Error> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let rules = self.rules.get(&*self.deps.rooms, &event.room_id).await?;
            let redaction = event.redacted_by.as_ref().and_then(|id| redactions.get(id));
            out.push(self.client_event_with(event, viewer, &rules, redaction)?);
        }
        Ok(out)
    }

    /// `unsigned["m.relations"]` per parent, from children the viewer may
    /// see; `latest` holds the formatted latest reply of each of
    /// `found.threads`, in their order.
    async fn bundles(
        &self,
        found: BundledAggregations,
        latest: Vec<JsonValue>,
        viewer: &ClientEventOptions,
    ) -> Result<Bundles, Error> {
        let mut bundles = Bundles::new();
        let (originals, edits): (Vec<String>, Vec<StoredEvent>) = found.edits.into_iter().unzip();
        let formatted = self.format_events(&edits, viewer, &HashMap::new()).await?;
        for (original, edit) in originals.into_iter().zip(formatted) {
            bundles.entry(original).or_default().insert("m.replace".into(), edit);
        }
        for (thread, latest_event) in found.threads.iter().zip(latest) {
            bundles.entry(thread.root.clone()).or_default().insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest_event,
                    "count": thread.count,
                    "current_user_participated": thread.participated,
                }),
            );
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

    /// One event; `redaction` is its redaction if the viewer may see it.
    fn client_event_with(
        &self,
        event: &StoredEvent,
        viewer: &ClientEventOptions,
        rules: &RedactionRules,
        redaction: Option<&StoredEvent>,
    ) -> Result<JsonValue, Error> {
        let (mut out, object) = if event.redacted_by.is_some() {
            let JsonValue::Object(object) =
                serde_json::from_str(&event.json).map_err(|e| Error::Internal(format!("stored event: {e}")))?
            else {
                return Err(Error::Internal("stored event is not an object".into()));
            };
            (base(event, &object), Some(object))
        } else {
            (shown(event)?, None)
        };
        let mut unsigned = Map::new();
        unsigned.insert("age".into(), json!(self.deps.clock.now_ms().saturating_sub(event.origin_server_ts)));
        if let Some(txn) = &event.txn
            && txn.user_id == viewer.user_id
            && txn.device_id == viewer.device_id
        {
            unsigned.insert("transaction_id".into(), json!(txn.txn_id));
        }
        if let Some(object) = object {
            out.insert("content".into(), redacted_content(&object, rules)?);
            if let Some(redaction) = redaction
                && let Ok(JsonValue::Object(r)) = serde_json::from_str::<JsonValue>(&redaction.json)
            {
                unsigned.insert("redacted_because".into(), JsonValue::Object(base(redaction, &r)));
            }
        }
        out.insert("unsigned".into(), JsonValue::Object(unsigned));
        Ok(JsonValue::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(event_type: &str, json: JsonValue) -> StoredEvent {
        StoredEvent {
            event_id: "$e".into(),
            room_id: "!r:x".into(),
            event_type: event_type.into(),
            state_key: None,
            sender: "@a:x".into(),
            origin_server_ts: 5,
            depth: 3,
            json: json.to_string(),
            membership: None,
            stream_pos: 9,
            redacted_by: None,
            txn: None,
        }
    }

    #[test]
    fn the_lean_read_shows_what_the_whole_pdu_shows() {
        let pdus = [
            (
                "m.room.message",
                json!({"type": "m.room.message", "sender": "@a:x", "origin_server_ts": 5, "room_id": "!r:x",
                "content": {"body": "hi", "nested": {"a": [1, 2]}}, "depth": 3, "prev_events": ["$p"], "auth_events": ["$q"],
                "hashes": {"sha256": "h"}, "signatures": {"x": {"ed25519:a": "s"}}, "unsigned": {"age_ts": 1}}),
            ),
            (
                "m.room.topic",
                json!({"type": "m.room.topic", "state_key": "", "sender": "@a:x", "origin_server_ts": 5,
                "content": {"topic": "t"}}),
            ),
            // v11+ keep `redacts` in content; it is shown at the top too.
            (
                "m.room.redaction",
                json!({"type": "m.room.redaction", "sender": "@a:x", "origin_server_ts": 5,
                "content": {"redacts": "$t"}}),
            ),
            (
                "m.room.redaction",
                json!({"type": "m.room.redaction", "sender": "@a:x", "origin_server_ts": 5,
                "redacts": "$old", "content": {}}),
            ),
        ];
        for (event_type, pdu) in pdus {
            let event = stored(event_type, pdu.clone());
            let JsonValue::Object(object) = pdu else { unreachable!() };
            assert_eq!(shown(&event).unwrap(), base(&event, &object), "{event_type}");
        }
    }
}
