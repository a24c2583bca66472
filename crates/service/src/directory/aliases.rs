//! Room aliases (client-server API "Room aliases"): `#name:server` names
//! that resolve to a room id. Aliases of other servers cannot be resolved
//! until federation exists.
//!
//! Who may do what follows Synapse: a joined member (or a server admin)
//! creates an alias; its creator, a server admin, or a joined member with
//! power to send `m.room.canonical_alias` deletes it.

use chancery_core::pdu::EventDraft;
use chancery_proto::limits::MAX_ALIASES_PER_ROOM;
use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_proto::ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, RoomOrAliasId};
use chancery_store::{RoomAlias, StoreError, history_visibility_of};
use serde_json::Value as JsonValue;

use super::Directory;
use crate::rooms::state::ensure_joined;
use crate::{AuthedUser, Error};

/// The aliases an `m.room.canonical_alias` content names: (`alias`,
/// `alt_aliases`), as given (not yet validated).
fn canonical_aliases(content: &JsonValue) -> (Option<&str>, Vec<&str>) {
    let alias = content.get("alias").and_then(|a| a.as_str()).filter(|a| !a.is_empty());
    let alt = content.get("alt_aliases").and_then(|a| a.as_array()).map(|a| a.iter().filter_map(|v| v.as_str()).collect());
    (alias, alt.unwrap_or_default())
}

impl Directory {
    /// An alias this server may create: ours, with a non-empty localpart
    /// without whitespace or control characters (people type and read
    /// aliases; the grammar alone allows any character but `:` and NUL).
    fn check_new_local_alias(&self, alias: &RoomAliasId) -> Result<(), Error> {
        if alias.server_name() != self.deps.server_name {
            return Err(Error::InvalidParam(format!("room aliases must end in :{}", self.deps.server_name)));
        }
        let localpart = alias.alias();
        if localpart.is_empty() || localpart.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidParam("room aliases need a name without spaces or control characters".into()));
        }
        Ok(())
    }

    /// `#name:our.server` for `createRoom`'s `room_alias_name`.
    pub(crate) fn new_local_alias(&self, name: &str) -> Result<OwnedRoomAliasId, Error> {
        let alias = RoomAliasId::parse(format!("#{name}:{}", self.deps.server_name))
            .map_err(|e| Error::InvalidParam(format!("invalid room_alias_name: {e}")))?;
        self.check_new_local_alias(&alias)?;
        Ok(alias)
    }

    /// `GET /directory/room/{roomAlias}`: the room and servers that may
    /// be asked to join it; another server's alias is asked of that server.
    pub async fn resolve_alias_with_servers(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>), Error> {
        if alias.server_name() != self.deps.server_name {
            return self.deps.federation.query_alias(alias).await;
        }
        Ok((self.resolve_alias(alias).await?, vec![self.deps.server_name.clone()]))
    }

    /// A room alias of this server or another's.
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId, Error> {
        if alias.server_name() != self.deps.server_name {
            return Ok(self.deps.federation.query_alias(alias).await?.0);
        }
        self.resolve_local_alias(alias).await
    }

    /// An alias of this server (`/_matrix/federation/v1/query/directory`
    /// answers only for these).
    pub async fn resolve_local_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId, Error> {
        if alias.server_name() != self.deps.server_name {
            return Err(Error::NotFound(format!("{alias} is not an alias of this server")));
        }
        let found = self.deps.store.alias(alias.as_str()).await?;
        let found = found.ok_or_else(|| Error::NotFound(format!("room alias {alias} not found")))?;
        RoomId::parse(found.room_id).map_err(|e| Error::Internal(format!("stored alias target: {e}")))
    }

    /// A room id, or the room an alias names (for `/join` and `/knock`).
    pub async fn resolve_room_or_alias(&self, target: &RoomOrAliasId) -> Result<OwnedRoomId, Error> {
        match <&RoomId>::try_from(target) {
            Ok(room_id) => Ok(room_id.to_owned()),
            Err(alias) => self.resolve_alias(alias).await,
        }
    }

    /// `PUT /directory/room/{roomAlias}`.
    pub async fn create_alias(&self, user: &AuthedUser, alias: &RoomAliasId, room_id: &RoomId) -> Result<(), Error> {
        self.check_new_local_alias(alias)?;
        if !user.is_admin {
            ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        }
        let new = RoomAlias {
            alias: alias.to_string(),
            room_id: room_id.to_string(),
            creator: user.user_id.to_string(),
            created_ts: self.deps.clock.now_ms(),
        };
        match self.deps.store.create_alias(&new, MAX_ALIASES_PER_ROOM).await {
            // The spec's answer to a taken alias here (`createRoom` answers
            // `M_ROOM_IN_USE`).
            Err(StoreError::AliasTaken) => Err(Error::AliasInUse(format!("room alias {alias} already exists"))),
            other => Ok(other?),
        }
    }

    /// `DELETE /directory/room/{roomAlias}`. Also drops the alias from the
    /// room's `m.room.canonical_alias` if the user may change it (spec:
    /// servers may, and then still delete when the user may not).
    pub async fn delete_alias(&self, user: &AuthedUser, alias: &RoomAliasId) -> Result<(), Error> {
        let not_found = || Error::NotFound(format!("room alias {alias} not found"));
        if alias.server_name() != self.deps.server_name {
            return Err(not_found());
        }
        let existing = self.deps.store.alias(alias.as_str()).await?.ok_or_else(not_found)?;
        let room_id = RoomId::parse(&existing.room_id).map_err(|e| Error::Internal(format!("stored alias target: {e}")))?;
        if existing.creator != user.user_id.as_str() {
            self.ensure_can_edit_addresses(user, &room_id).await?;
        }
        if !self.deps.store.delete_alias(alias.as_str()).await? {
            return Err(not_found());
        }
        if let Err(e) = self.drop_from_canonical_alias(user, &room_id, alias).await {
            tracing::debug!(error = %e, "deleted alias stays in the canonical alias event");
        }
        Ok(())
    }

    async fn drop_from_canonical_alias(&self, user: &AuthedUser, room_id: &RoomId, alias: &RoomAliasId) -> Result<(), Error> {
        let Some(event) = self.deps.rooms.state_event(room_id.as_str(), "m.room.canonical_alias", "", None).await? else {
            return Ok(());
        };
        let content: JsonValue =
            serde_json::from_str::<JsonValue>(&event.json).ok().and_then(|v| v.get("content").cloned()).unwrap_or_default();
        let (main, alt) = canonical_aliases(&content);
        if main != Some(alias.as_str()) && !alt.contains(&alias.as_str()) {
            return Ok(());
        }
        let mut updated = content.as_object().cloned().unwrap_or_default();
        if main == Some(alias.as_str()) {
            updated.remove("alias");
        }
        if let Some(JsonValue::Array(list)) = updated.get_mut("alt_aliases") {
            list.retain(|a| a.as_str() != Some(alias.as_str()));
            if list.is_empty() {
                updated.remove("alt_aliases");
            }
        }
        let draft = EventDraft {
            room_id: None,
            sender: user.user_id.clone(),
            event_type: "m.room.canonical_alias".into(),
            state_key: Some(String::new()),
            content: JsonValue::Object(updated),
            redacts: None,
        };
        self.deps.writer.append(room_id, draft, None).await.map(drop)
    }

    /// `GET /rooms/{roomId}/aliases`: for joined members, anyone if the
    /// room is world-readable, and server admins.
    pub async fn room_aliases(&self, user: &AuthedUser, room_id: &RoomId) -> Result<Vec<String>, Error> {
        if !user.is_admin && ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await.is_err() {
            let visibility = self.deps.rooms.state_event(room_id.as_str(), "m.room.history_visibility", "", None).await?;
            let world_readable =
                visibility.and_then(|e| history_visibility_of(&e.json)) == Some(HistoryVisibility::WorldReadable);
            if !world_readable {
                return Err(Error::Forbidden("you are not a member of this room".into()));
            }
        }
        Ok(self.deps.store.aliases_of_room(room_id.as_str()).await?)
    }

    /// Spec "PUT state": every alias an `m.room.canonical_alias` event adds
    /// (to `alias` or `alt_aliases`) must exist and point to the room
    /// (`M_BAD_ALIAS`), and be an alias at all (`M_INVALID_PARAM`).
    /// Aliases the room's current event already names are not checked
    /// again, as in Synapse: a deleted alias must not block other edits.
    pub(crate) async fn check_canonical_alias(&self, room_id: &RoomId, content: &JsonValue) -> Result<(), Error> {
        let current = self.deps.rooms.state_event(room_id.as_str(), "m.room.canonical_alias", "", None).await?;
        let current: JsonValue = current
            .and_then(|e| serde_json::from_str::<JsonValue>(&e.json).ok())
            .map(|v| v["content"].clone())
            .unwrap_or_default();
        let (old_main, old_alt) = canonical_aliases(&current);
        let mut added = Vec::new();
        match content.get("alias") {
            None | Some(JsonValue::Null) => {}
            Some(JsonValue::String(alias)) if alias.is_empty() => {}
            Some(JsonValue::String(alias)) if Some(alias.as_str()) != old_main => added.push(alias.as_str()),
            Some(JsonValue::String(_)) => {}
            Some(_) => return Err(Error::InvalidParam("alias must be a string".into())),
        }
        match content.get("alt_aliases") {
            None => {}
            Some(JsonValue::Array(list)) => {
                for alias in list {
                    let alias = alias.as_str().ok_or_else(|| Error::InvalidParam("alt_aliases must be strings".into()))?;
                    if !old_alt.contains(&alias) && !added.contains(&alias) {
                        // Checked as the list grows, so a huge list is
                        // refused before it costs quadratic time.
                        if added.len() > MAX_ALIASES_PER_ROOM {
                            return Err(Error::BadAlias(format!("a room has at most {MAX_ALIASES_PER_ROOM} aliases")));
                        }
                        added.push(alias);
                    }
                }
            }
            Some(_) => return Err(Error::InvalidParam("alt_aliases must be a list".into())),
        }
        // Every valid alias is a local alias of this room, of which there
        // are at most MAX_ALIASES_PER_ROOM: more cannot all be valid.
        if added.len() > MAX_ALIASES_PER_ROOM + 1 {
            return Err(Error::BadAlias(format!("a room has at most {MAX_ALIASES_PER_ROOM} aliases")));
        }
        for alias in added {
            let parsed = RoomAliasId::parse(alias)
                .map_err(|e| Error::InvalidParam(format!("{alias:?} is not a valid room alias: {e}")))?;
            match self.resolve_alias(&parsed).await {
                Ok(target) if target == room_id => {}
                Ok(_) => return Err(Error::BadAlias(format!("the alias {alias} does not point to this room"))),
                Err(Error::NotFound(why)) => return Err(Error::BadAlias(why)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
