//! Sliding-sync extensions (MSC3885 to-device, MSC3884 e2ee, MSC3959
//! account data, MSC3960 receipts, MSC3961 typing), from the same
//! components `/sync` uses, and MSC4308 thread subscriptions.

use std::collections::{BTreeSet, HashMap};

use chancery_proto::ruma::api::client::sync::sync_events::v5::request;
use serde_json::{Map, Value as JsonValue, json};
use tokio::time::Instant;

use super::{SlidingSync, decide, object};
use crate::keys::MembershipNews;
use crate::stream_token::StreamToken;
use crate::{AuthedUser, Error};

pub(super) struct ExtensionsPart {
    pub body: JsonValue,
    pub has_news: bool,
    pub next_typing_expiry: Option<Instant>,
}

/// Where the client's to-device extension stands (`since`: the
/// `next_batch` it last got).
fn to_device_since(since: Option<&str>) -> Result<Option<StreamToken>, Error> {
    since
        .map(|s| s.parse::<u64>().map(|to_device| StreamToken { to_device, ..StreamToken::default() }))
        .transpose()
        .map_err(|_| Error::InvalidParam("malformed to_device since token".into()))
}

/// The room's receipt events (one per thread) as the one `m.receipt`
/// event the extension carries per room: their contents merged, event
/// by event, receipt type by receipt type (each receipt keeps its
/// `thread_id`).
fn merged_receipts(events: Vec<JsonValue>) -> Option<JsonValue> {
    let mut merged: Map<String, JsonValue> = Map::new();
    for mut event in events {
        let JsonValue::Object(content) = event["content"].take() else { continue };
        for (event_id, by_type) in content {
            let JsonValue::Object(by_type) = by_type else { continue };
            let JsonValue::Object(slot) = merged.entry(event_id).or_insert_with(|| json!({})) else { continue };
            for (receipt_type, by_user) in by_type {
                let JsonValue::Object(by_user) = by_user else { continue };
                if let JsonValue::Object(users) = slot.entry(receipt_type).or_insert_with(|| json!({})) {
                    users.extend(by_user);
                }
            }
        }
    }
    (!merged.is_empty()).then(|| json!({ "type": "m.receipt", "content": merged }))
}

impl SlidingSync {
    /// The extensions the request enables, for the rooms in `view` (the
    /// answer's rooms and the subscriptions); moves `cut`'s account-data
    /// and typing positions to what was sent.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn extensions(
        &self,
        user: &AuthedUser,
        ext: &request::Extensions,
        since: Option<StreamToken>,
        cut: &mut StreamToken,
        joined: &BTreeSet<String>,
        view: &[decide::InView<'_>],
        initial_rooms: &BTreeSet<&str>,
    ) -> Result<ExtensionsPart, Error> {
        let mut body = Map::new();
        let mut has_news = false;
        let to_device_on = ext.to_device.enabled == Some(true);
        let e2ee_on = ext.e2ee.enabled == Some(true);
        if to_device_on || e2ee_on {
            // Without the to-device extension the inbox is only read for
            // the key counts: nothing is delivered or acknowledged.
            let td_since = if to_device_on { to_device_since(ext.to_device.since.as_deref())? } else { None };
            let inbox = self.deps.keys.sync_inbox(user, td_since, *cut).await?;
            if to_device_on {
                has_news |= !inbox.to_device.is_empty() || inbox.more_to_device;
                body.insert(
                    "to_device".into(),
                    object([
                        ("next_batch", json!(inbox.to_device_up_to.to_string())),
                        ("events", JsonValue::Array(inbox.to_device)),
                    ]),
                );
            }
            if e2ee_on {
                let lists = self.deps.keys.sync_device_lists(user, since, *cut, MembershipNews::Possible).await?;
                has_news |= !lists.changed.is_empty() || !lists.left.is_empty();
                let mut counts = inbox.one_time_key_counts;
                counts.entry("signed_curve25519".into()).or_insert(0);
                body.insert(
                    "e2ee".into(),
                    json!({
                        "device_lists": { "changed": lists.changed, "left": lists.left },
                        "device_one_time_keys_count": counts,
                        "device_unused_fallback_key_types": inbox.unused_fallback_key_types,
                    }),
                );
            }
        }
        if ext.account_data.enabled == Some(true) {
            let (part, news) = self.account_data_part(user, since, cut).await?;
            has_news |= news;
            body.insert("account_data".into(), part);
        }
        let joined_in = |lists: Option<&[String]>, rooms: Option<&[request::ExtensionRoomConfig]>| -> Vec<&str> {
            decide::extension_rooms(view, lists, rooms).into_iter().filter(|r| joined.contains(*r)).collect()
        };
        if ext.receipts.enabled == Some(true) {
            let mut rooms = Map::new();
            for room_id in &joined_in(ext.receipts.lists.as_deref(), ext.receipts.rooms.as_deref()) {
                let after = if initial_rooms.contains(room_id) { 0 } else { since.map_or(0, |s| s.receipts) };
                let events = self.deps.ephemeral.receipt_events(room_id, after, cut.receipts, user.user_id.as_str()).await?;
                if let Some(event) = merged_receipts(events) {
                    rooms.insert((*room_id).to_owned(), event);
                }
            }
            has_news |= !rooms.is_empty();
            body.insert("receipts".into(), object([("rooms", JsonValue::Object(rooms))]));
        }
        let mut next_typing_expiry = None;
        if ext.typing.enabled == Some(true) {
            let joined_view = joined_in(ext.typing.lists.as_deref(), ext.typing.rooms.as_deref());
            let snapshot = self.deps.ephemeral.typing_snapshot(joined_view.iter().copied());
            cut.typing = since.map_or(snapshot.serial, |s| s.typing.max(snapshot.serial));
            let mut rooms = Map::new();
            // Behind the floor (a token of another node, or from before a
            // restart), the client may hold typers that are gone: every
            // room in view is told who types now.
            let stale = since.is_some_and(|s| s.typing < snapshot.floor);
            for room_id in &joined_view {
                let (changed, typers) = snapshot.rooms.get(*room_id).map_or((0, &[][..]), |(c, t)| (*c, t.as_slice()));
                let news = match since {
                    _ if stale => true,
                    Some(s) => changed > s.typing || (initial_rooms.contains(room_id) && !typers.is_empty()),
                    None => !typers.is_empty(),
                };
                if news {
                    rooms.insert((*room_id).to_owned(), json!({ "type": "m.typing", "content": { "user_ids": typers } }));
                }
            }
            has_news |= !rooms.is_empty();
            next_typing_expiry = snapshot.next_expiry;
            body.insert("typing".into(), object([("rooms", JsonValue::Object(rooms))]));
        }
        if ext.thread_subscriptions.enabled == Some(true)
            && self.deps.thread_subscriptions.enabled()
            && let Some(part) = self.thread_subscriptions_part(user, ext, since, cut).await?
        {
            has_news = true;
            body.insert("io.element.msc4308.thread_subscriptions".into(), part);
        }
        Ok(ExtensionsPart { body: JsonValue::Object(body), has_news, next_typing_expiry })
    }

    /// MSC4308: the user's thread subscriptions changed since the
    /// connection's token (the newest `limit`, with `prev_batch` for the
    /// rest, which the client pages back through with
    /// `/unstable/io.element.msc4308/thread_subscriptions`); on a new
    /// connection the newest of all. `None` when nothing changed (left
    /// out of the answer, as Synapse does).
    async fn thread_subscriptions_part(
        &self,
        user: &AuthedUser,
        ext: &request::Extensions,
        since: Option<StreamToken>,
        cut: &StreamToken,
    ) -> Result<Option<JsonValue>, Error> {
        use crate::thread_subscriptions::{PageBounds, page_limit};
        use chancery_proto::limits::DEFAULT_THREAD_SUBSCRIPTIONS_PAGE;
        let limit = match ext.thread_subscriptions.limit.map(u64::from) {
            // Synapse answers nothing for a limit of 0.
            Some(0) => return Ok(None),
            limit => page_limit(limit, DEFAULT_THREAD_SUBSCRIPTIONS_PAGE)?,
        };
        let bounds = PageBounds { after: since.map_or(0, |s| s.thread_subscriptions), up_to: cut.thread_subscriptions };
        let (mut part, rest) = self.deps.thread_subscriptions.changes(user.user_id.as_str(), bounds, limit).await?;
        if part.is_empty() {
            return Ok(None);
        }
        if let Some(rest) = rest {
            part.insert("prev_batch".into(), json!(rest));
        }
        Ok(Some(JsonValue::Object(part)))
    }

    /// Account data changed since the client's token (all of it on a new
    /// connection, with the default push rules if the user has none), as
    /// much as one answer carries.
    async fn account_data_part(
        &self,
        user: &AuthedUser,
        since: Option<StreamToken>,
        cut: &mut StreamToken,
    ) -> Result<(JsonValue, bool), Error> {
        let after = since.map_or(0, |s| s.account_data);
        let (changes, up_to, more) =
            crate::sync::account_data_batch(&self.deps.account_data, user.user_id.as_str(), after, cut.account_data).await?;
        cut.account_data = up_to;
        let mut global = Vec::new();
        let mut rooms: HashMap<String, Vec<JsonValue>> = HashMap::new();
        for (room_id, event) in changes {
            match room_id {
                None => global.push(event),
                Some(room_id) => rooms.entry(room_id).or_default().push(event),
            }
        }
        let news = more || !global.is_empty() || !rooms.is_empty();
        if since.is_none() && !global.iter().any(|e| e["type"] == "m.push_rules") {
            let ruleset = self.deps.push.push_ruleset(&user.user_id).await?;
            global.push(json!({ "type": "m.push_rules", "content": { "global": ruleset } }));
        }
        let rooms = rooms.into_iter().map(|(room_id, events)| (room_id, JsonValue::Array(events))).collect();
        Ok((object([("global", JsonValue::Array(global)), ("rooms", JsonValue::Object(rooms))]), news))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_of_every_thread_go_in_one_event() {
        let unthreaded = json!({"type": "m.receipt", "content": {"$a": {"m.read": {"@x:s": {"ts": 1}}}}});
        let main = json!({"type": "m.receipt", "content": {
            "$a": {"m.read": {"@y:s": {"ts": 2, "thread_id": "main"}}},
            "$b": {"m.read.private": {"@me:s": {"ts": 3, "thread_id": "main"}}},
        }});
        let merged = merged_receipts(vec![unthreaded, main]).unwrap();
        assert_eq!(
            merged,
            json!({"type": "m.receipt", "content": {
                "$a": {"m.read": {"@x:s": {"ts": 1}, "@y:s": {"ts": 2, "thread_id": "main"}}},
                "$b": {"m.read.private": {"@me:s": {"ts": 3, "thread_id": "main"}}},
            }})
        );
        assert_eq!(merged_receipts(Vec::new()), None);
    }
}
