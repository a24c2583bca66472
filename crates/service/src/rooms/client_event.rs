//! Stored PDUs as clients see them (client-server API "Room event format"):
//! no hashes, signatures or DAG fields; `unsigned` with `age`, the sender's
//! own `transaction_id`, and `redacted_because` with the content stripped
//! by the room version's redaction algorithm.

use chancery_proto::ruma::CanonicalJsonObject;
use chancery_proto::ruma::canonical_json::redact;
use chancery_proto::ruma::room_version_rules::RedactionRules;
use chancery_store::StoredEvent;
use serde_json::{Map, Value as JsonValue, json};

use super::rules_of;
use crate::{AuthedUser, Error, Services, now_ms};

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

impl Services {
    /// Formats events of one room for a viewer.
    pub async fn client_events(&self, events: &[StoredEvent], viewer: &ClientEventOptions) -> Result<Vec<JsonValue>, Error> {
        let mut out = Vec::with_capacity(events.len());
        let mut rules_cache: Option<(String, RedactionRules)> = None;
        for event in events {
            let rules = match &rules_cache {
                Some((room, rules)) if *room == event.room_id => rules.clone(),
                _ => {
                    let info = self
                        .store()
                        .room(&event.room_id)
                        .await?
                        .ok_or_else(|| Error::Internal("event of unknown room".into()))?;
                    let rules = rules_of(&info.room_version)?.1.redaction;
                    rules_cache = Some((event.room_id.clone(), rules.clone()));
                    rules
                }
            };
            out.push(self.client_event_with(event, viewer, &rules).await?);
        }
        Ok(out)
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
        unsigned.insert("age".into(), json!(now_ms().saturating_sub(event.origin_server_ts)));
        if let Some(txn) = &event.txn
            && txn.user_id == viewer.user_id
            && txn.device_id == viewer.device_id
            && !txn.txn_id.starts_with("redact:")
        {
            unsigned.insert("transaction_id".into(), json!(txn.txn_id));
        }
        if let Some(redaction_id) = &event.redacted_by {
            out.insert("content".into(), redacted_content(&object, rules)?);
            if let Some(redaction) = self.store().event(redaction_id).await?
                && let Ok(JsonValue::Object(r)) = serde_json::from_str::<JsonValue>(&redaction.json)
            {
                unsigned.insert("redacted_because".into(), JsonValue::Object(base(&redaction, &r)));
            }
        }
        out.insert("unsigned".into(), JsonValue::Object(unsigned));
        Ok(JsonValue::Object(out))
    }
}
