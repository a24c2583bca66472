//! Account data (client-server API "Client Config"): per-user JSON
//! objects, global or scoped to a room, including room tags (`m.tag`) and
//! the fully-read marker (`m.fully_read`).
//!
//! Every change gets a position in the account-data stream, its own stream
//! beside the events stream (a sync token carries both). Like event
//! positions, account-data positions become visible in order: everything
//! at or below [`AccountDataStore::current_account_data_pos`] is readable,
//! so a syncing client that continues after that position misses nothing.
//! A change replaces the entry and moves it to the new position, so a
//! range query returns each key once, with its latest content.
//!
//! A user's account data is bounded as a whole, in entries and in bytes
//! ([`AccountDataLimits`]), checked in the write's transaction under the
//! user's lock, so the bounds hold under concurrent writes from any node.

use async_trait::async_trait;
use serde_json::{Map, Value as JsonValue};

use crate::{StoreError, StoreResult};

/// The account-data type that holds a room's tags.
pub const TAG_EVENT_TYPE: &str = "m.tag";

/// One account-data entry, as of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDataEntry {
    /// `None` for global account data.
    pub room_id: Option<String>,
    pub event_type: String,
    /// The content, a JSON object.
    pub content: String,
    /// Position of the last change in the account-data stream.
    pub stream_pos: u64,
}

/// Bounds a user's account data (see `proto::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountDataLimits {
    /// Entries (global and per room together) one user may hold.
    pub max_entries: usize,
    /// Serialized size of one entry's content.
    pub max_content_bytes: usize,
    /// Size of all of one user's entries together, each measured by
    /// [`account_data_entry_bytes`].
    pub max_total_bytes: usize,
}

/// Bounds one read of a user's changes ([`AccountDataStore::account_data_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountDataBatchLimits {
    /// Entries read at most.
    pub max_entries: usize,
    /// Entries are read while those before came to less than this many
    /// bytes ([`account_data_entry_bytes`]), so one read holds at most this
    /// plus one entry.
    pub max_bytes: usize,
}

/// What one entry counts for in [`AccountDataLimits::max_total_bytes`]
/// and [`AccountDataBatchLimits::max_bytes`]: the bytes of its room id
/// (empty for global data), type and content. The SQL backends compute
/// the same in SQL (`chancery_store_sql::rows::ACCOUNT_DATA_ENTRY_BYTES`).
pub fn account_data_entry_bytes(room_id: Option<&str>, event_type: &str, content: &str) -> usize {
    room_id.map_or(0, str::len) + event_type.len() + content.len()
}

#[async_trait]
pub trait AccountDataStore: Send + Sync {
    /// Sets (creates or replaces) one entry and gives it the next position
    /// of the account-data stream, which it returns. `content` is a JSON
    /// object serialized. Nothing is written if a limit would be passed:
    /// `AccountDataTooLarge` if `content` is over `max_content_bytes`;
    /// `TooManyAccountData` if this would be a new entry past
    /// `max_entries` (replacing an existing one is always allowed);
    /// `AccountDataTotalTooLarge` if the user's entries would come to more
    /// than `max_total_bytes` (a write that does not grow them is always
    /// allowed, so a user over a lowered limit can still replace entries).
    async fn set_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        event_type: &str,
        content: &str,
        limits: AccountDataLimits,
    ) -> StoreResult<u64>;

    /// Adds (`info` is `Some`) or removes (`None`) one tag of the room's
    /// `m.tag` entry, read-modify-write in one transaction, so concurrent
    /// changes to different tags of one room all survive. Returns the new
    /// position, or `None` if the content did not change (nothing written).
    /// `AccountDataTooLarge`, `TooManyAccountData` and
    /// `AccountDataTotalTooLarge` as for `set_account_data`, of the new
    /// `m.tag` content.
    async fn set_room_tag(
        &self,
        user_id: &str,
        room_id: &str,
        tag: &str,
        info: Option<&JsonValue>,
        limits: AccountDataLimits,
    ) -> StoreResult<Option<u64>>;

    /// The content of one entry, if set.
    async fn account_data(&self, user_id: &str, room_id: Option<&str>, event_type: &str) -> StoreResult<Option<String>>;

    /// The user's entries (global and per room) whose last change is at a
    /// position in `(after, up_to]`, sorted by position (`after = 0`:
    /// initial sync), as many as `batch` allows from the lowest position
    /// on (at least one, if there is one): the caller continues after the
    /// last one returned.
    async fn account_data_changes(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        batch: AccountDataBatchLimits,
    ) -> StoreResult<Vec<AccountDataEntry>>;

    /// The highest account-data position whose change is committed; every
    /// position at or below it is visible to readers.
    async fn current_account_data_pos(&self) -> StoreResult<u64>;
}

/// The `m.tag` content after adding or removing one tag, or `None` if it
/// would not change. Shared by the backends, which call it inside their
/// write transaction. Content of another shape (a client may have written
/// `m.tag` through the generic endpoint) is repaired into `{"tags": {}}`
/// rather than refused, so the tag endpoints always work.
pub fn apply_tag_change(current: Option<&str>, tag: &str, info: Option<&JsonValue>) -> StoreResult<Option<String>> {
    let mut content: Map<String, JsonValue> = match current.map(serde_json::from_str::<JsonValue>) {
        Some(Ok(JsonValue::Object(map))) => map,
        Some(Err(_)) => return Err(StoreError::Backend("stored m.tag content is not JSON".into())),
        _ => Map::new(),
    };
    let before = JsonValue::Object(content.clone());
    if !content.get("tags").is_some_and(JsonValue::is_object) {
        content.insert("tags".into(), JsonValue::Object(Map::new()));
    }
    let Some(JsonValue::Object(tags)) = content.get_mut("tags") else { unreachable!("tags was just made an object") };
    match info {
        Some(info) => {
            tags.insert(tag.to_owned(), info.clone());
        }
        None => {
            tags.remove(tag);
        }
    }
    let after = JsonValue::Object(content);
    if current.is_some() && after == before {
        return Ok(None);
    }
    // Removing a tag from a room that has none: nothing to write either.
    if current.is_none() && info.is_none() {
        return Ok(None);
    }
    Ok(Some(after.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tag_changes() {
        let parsed = |s: Option<String>| s.map(|s| serde_json::from_str::<JsonValue>(&s).unwrap());
        let add = |current: Option<&str>, tag, info: JsonValue| parsed(apply_tag_change(current, tag, Some(&info)).unwrap());
        let remove = |current: Option<&str>, tag| parsed(apply_tag_change(current, tag, None).unwrap());
        assert_eq!(add(None, "u.work", json!({"order": 0.5})), Some(json!({"tags": {"u.work": {"order": 0.5}}})));
        let two = add(Some(r#"{"tags":{"u.work":{}}}"#), "m.favourite", json!({}));
        assert_eq!(two, Some(json!({"tags": {"u.work": {}, "m.favourite": {}}})));
        assert_eq!(add(Some(r#"{"tags":{"u.work":{}}}"#), "u.work", json!({})), None);
        assert_eq!(remove(Some(r#"{"tags":{"u.work":{}}}"#), "u.other"), None);
        assert_eq!(remove(None, "u.other"), None);
        assert_eq!(remove(Some(r#"{"tags":{"u.work":{}}}"#), "u.work"), Some(json!({"tags": {}})));
        // Other keys are kept; a broken `tags` is repaired.
        assert_eq!(add(Some(r#"{"x":1,"tags":5}"#), "t", json!({})), Some(json!({"tags": {"t": {}}, "x": 1})));
    }
}
