//! The account-data component: account data (client-server API "Client
//! Config"), room tags ("Room Tagging") and the fully-read marker, all
//! stored as account data and delivered by `/sync`; the ignored-user list
//! that `/sync` and `/messages` apply; and stored sync filters
//! (`filters.rs`).

mod filters;

use std::collections::BTreeSet;
use std::sync::Arc;

use chancery_proto::limits::{
    MAX_ACCOUNT_DATA_BYTES, MAX_ACCOUNT_DATA_BYTES_PER_USER, MAX_ACCOUNT_DATA_ENTRIES_PER_USER, MAX_EVENT_TYPE_BYTES,
    MAX_TAG_BYTES,
};
use chancery_proto::ruma::{EventId, RoomId, UserId};
use chancery_store::{
    AccountDataBatchLimits, AccountDataEntry, AccountDataLimits, AccountDataStore, RoomStore, TAG_EVENT_TYPE, UserDataStore,
};
use serde_json::{Value as JsonValue, json};

use crate::notifier::Notifier;
use crate::nul::{refuse_nul_in_json, refuse_nul_in_param};
use crate::rooms::state::membership;
use crate::{AuthedUser, Error};

/// Types the server manages (spec "Client Config", server behaviour:
/// "Servers MUST reject setting account data for event types that the
/// server manages by using a 405 error response").
const SERVER_MANAGED_TYPES: &[&str] = &[FULLY_READ, "m.push_rules"];

/// Global account data listing the users whose events the user ignores.
pub(crate) const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The fully-read marker: room account data only the server writes.
pub(crate) const FULLY_READ: &str = "m.fully_read";

pub(crate) const LIMITS: AccountDataLimits = AccountDataLimits {
    max_entries: MAX_ACCOUNT_DATA_ENTRIES_PER_USER,
    max_content_bytes: MAX_ACCOUNT_DATA_BYTES,
    max_total_bytes: MAX_ACCOUNT_DATA_BYTES_PER_USER,
};

fn ensure_self(user: &AuthedUser, target: &UserId) -> Result<(), Error> {
    if user.user_id != target {
        return Err(Error::Forbidden("you can only access your own account data".into()));
    }
    Ok(())
}

fn check_type(event_type: &str) -> Result<(), Error> {
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(Error::InvalidParam(format!("account data types are 1 to {MAX_EVENT_TYPE_BYTES} bytes")));
    }
    refuse_nul_in_param(event_type, "account data types")
}

/// What [`AccountData`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct AccountDataDeps {
    pub store: Arc<dyn AccountDataStore>,
    pub filters: Arc<dyn UserDataStore>,
    /// Room account data and tags only for rooms the user has a membership in.
    pub rooms: Arc<dyn RoomStore>,
    pub notifier: Arc<Notifier>,
}

/// Users' account data and filters.
pub struct AccountData {
    deps: AccountDataDeps,
}

impl AccountData {
    pub fn new(deps: AccountDataDeps) -> Self {
        Self { deps }
    }

    /// `PUT /user/{userId}/account_data/{type}` and
    /// `PUT /user/{userId}/rooms/{roomId}/account_data/{type}`.
    pub async fn set_account_data(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
        content: JsonValue,
    ) -> Result<(), Error> {
        ensure_self(user, target)?;
        check_type(event_type)?;
        if SERVER_MANAGED_TYPES.contains(&event_type) {
            return Err(Error::ServerManaged(format!("cannot set {event_type} through this API")));
        }
        if !content.is_object() {
            return Err(Error::BadJson("account data content must be a JSON object".into()));
        }
        refuse_nul_in_json(&content, "account data")?;
        let text = content.to_string();
        if text.len() > MAX_ACCOUNT_DATA_BYTES {
            return Err(Error::TooLarge(format!("account data content is at most {MAX_ACCOUNT_DATA_BYTES} bytes")));
        }
        if let Some(room_id) = room_id {
            self.ensure_member(user, room_id).await?;
        }
        self.deps.store.set_account_data(user.user_id.as_str(), room_id.map(|r| r.as_str()), event_type, &text, LIMITS).await?;
        self.deps.notifier.user(user.user_id.as_str());
        Ok(())
    }

    /// `GET /user/{userId}/account_data/{type}` and its per-room form: the
    /// content. Server-managed types are readable as any other.
    pub async fn account_data(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
    ) -> Result<JsonValue, Error> {
        ensure_self(user, target)?;
        let text = self
            .deps
            .store
            .account_data(user.user_id.as_str(), room_id.map(|r| r.as_str()), event_type)
            .await?
            .ok_or_else(|| Error::NotFound("no account data of this type".into()))?;
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("stored account data: {e}")))
    }

    /// `GET /user/{userId}/rooms/{roomId}/tags`: `{"tags": {...}}`, empty
    /// when the room has none.
    pub async fn room_tags(&self, user: &AuthedUser, target: &UserId, room_id: &RoomId) -> Result<JsonValue, Error> {
        ensure_self(user, target)?;
        let stored = self.deps.store.account_data(user.user_id.as_str(), Some(room_id.as_str()), TAG_EVENT_TYPE).await?;
        let tags = stored
            .and_then(|text| serde_json::from_str::<JsonValue>(&text).ok())
            .and_then(|mut content| content.get_mut("tags").map(JsonValue::take))
            .filter(JsonValue::is_object)
            .unwrap_or_else(|| json!({}));
        Ok(json!({ "tags": tags }))
    }

    /// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}` (`info` is `Some`)
    /// and `DELETE` (`None`).
    pub async fn set_room_tag(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: &RoomId,
        tag: &str,
        info: Option<JsonValue>,
    ) -> Result<(), Error> {
        ensure_self(user, target)?;
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
            return Err(Error::InvalidParam(format!("tag names are 1 to {MAX_TAG_BYTES} bytes")));
        }
        if let Some(info) = &info {
            // The tag's name becomes a key of the stored `m.tag` content
            // (removing one stored before this check stays possible).
            refuse_nul_in_param(tag, "tag names")?;
            // Spec "Room Tagging": the tag's object; `order` is a number.
            let Some(object) = info.as_object() else {
                return Err(Error::BadJson("a tag's content must be a JSON object".into()));
            };
            if object.get("order").is_some_and(|o| !o.is_number()) {
                return Err(Error::BadJson("a tag's order must be a number".into()));
            }
            refuse_nul_in_json(info, "a tag's content")?;
            // Only adding: removing a tag frees space, whatever the room.
            self.ensure_member(user, room_id).await?;
        }
        let changed = self.deps.store.set_room_tag(user.user_id.as_str(), room_id.as_str(), tag, info.as_ref(), LIMITS).await?;
        if changed.is_some() {
            self.deps.notifier.user(user.user_id.as_str());
        }
        Ok(())
    }

    /// The `m.fully_read` room account data, which clients may not write
    /// directly (spec "Fully read markers").
    pub(crate) async fn set_fully_read(&self, user: &AuthedUser, room_id: &RoomId, event_id: &EventId) -> Result<(), Error> {
        let content = json!({ "event_id": event_id }).to_string();
        self.deps.store.set_account_data(user.user_id.as_str(), Some(room_id.as_str()), FULLY_READ, &content, LIMITS).await?;
        self.deps.notifier.user(user.user_id.as_str());
        Ok(())
    }

    /// The user's entries changed at positions in `(after, up_to]` (all of
    /// them from 0), for `/sync`: the first of them, as many as `batch`
    /// allows.
    pub(crate) async fn changes(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        batch: AccountDataBatchLimits,
    ) -> Result<Vec<AccountDataEntry>, Error> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        Ok(self.deps.store.account_data_changes(user_id, after, up_to, batch).await?)
    }

    /// Room account data and tags are for rooms the user is in, was in,
    /// or is invited to or knocking on: any membership, as Synapse asks of
    /// tags. The spec ("Client Config", "Room Tagging") sets no condition,
    /// but a room the user never had anything to do with is only a way to
    /// grow their data; invites and rooms left are tagged by clients too
    /// (low priority, archived).
    async fn ensure_member(&self, user: &AuthedUser, room_id: &RoomId) -> Result<(), Error> {
        match membership(&*self.deps.rooms, room_id, &user.user_id).await? {
            Some(_) => Ok(()),
            None => Err(Error::Forbidden("you have no membership in this room".into())),
        }
    }

    /// The users whose events `user_id` does not want to see
    /// (`m.ignored_user_list`, spec "Ignoring Users"); empty if unset or
    /// malformed.
    /// The rooms the user's `m.direct` account data names (spec "Direct
    /// Messaging"): `{user_id: [room_id, ...]}`; anything else is skipped.
    pub(crate) async fn direct_rooms(&self, user_id: &str) -> Result<BTreeSet<String>, Error> {
        let Some(text) = self.deps.store.account_data(user_id, None, "m.direct").await? else {
            return Ok(BTreeSet::new());
        };
        let content: JsonValue = serde_json::from_str(&text).unwrap_or_default();
        let rooms = content.as_object().into_iter().flat_map(|by_user| by_user.values());
        Ok(rooms.filter_map(JsonValue::as_array).flatten().filter_map(JsonValue::as_str).map(str::to_owned).collect())
    }

    pub(crate) async fn ignored_users(&self, user_id: &str) -> Result<BTreeSet<String>, Error> {
        let Some(text) = self.deps.store.account_data(user_id, None, IGNORED_USER_LIST).await? else {
            return Ok(BTreeSet::new());
        };
        Ok(ignored_from_content(&text))
    }
}

/// The user ids of an `m.ignored_user_list` content.
pub(crate) fn ignored_from_content(text: &str) -> BTreeSet<String> {
    serde_json::from_str::<JsonValue>(text)
        .ok()
        .and_then(|content| content.get("ignored_users").and_then(JsonValue::as_object).map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}
