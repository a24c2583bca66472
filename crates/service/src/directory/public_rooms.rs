//! The published room directory (client-server API "Published room
//! directory"): which rooms are listed, and `/publicRooms` pages.
//!
//! Pages are keyset-paginated in the store's order (most joined members
//! first, then room id): `next_batch` names the last room of a page,
//! `prev_batch` the first, so a room joining or leaving the directory
//! between two pages neither repeats nor skips the others.

use chancery_proto::limits::{MAX_DIRECTORY_ROOM_TYPES, MAX_DIRECTORY_SEARCH_TERM_BYTES, MAX_PUBLIC_ROOMS_LIMIT};
use chancery_proto::ruma::RoomId;
use chancery_proto::ruma::ServerName;
use chancery_proto::ruma::events::room::guest_access::GuestAccess;
use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_store::{DirectoryCursor, PublicRoomEntry, PublicRoomsQuery};
use serde_json::{Map, Value as JsonValue, json};

use super::Directory;
use crate::{AuthedUser, Error};

/// What a client asked `/publicRooms` for (GET or POST).
#[derive(Debug, Clone, Default)]
pub struct PublicRoomsRequest {
    /// The server whose directory to read; `None` for ours.
    pub server: Option<String>,
    /// `None` or 0: the largest page.
    pub limit: Option<u64>,
    pub since: Option<String>,
    pub search: Option<String>,
    /// `None` in the list: rooms without a type.
    pub room_types: Vec<Option<String>>,
    /// A `third_party_instance_id`: rooms of an application-service
    /// network, of which this server has none.
    pub third_party_network: bool,
}

fn format_cursor(entry: &PublicRoomEntry, forward: bool) -> String {
    format!("{}{}_{}", if forward { 'n' } else { 'p' }, entry.joined_members, entry.room_id)
}

fn parse_cursor(token: &str) -> Result<DirectoryCursor, Error> {
    let bad = || Error::InvalidParam("malformed pagination token".into());
    let forward = match token.chars().next() {
        Some('n') => true,
        Some('p') => false,
        _ => return Err(bad()),
    };
    let (count, room_id) = token[1..].split_once('_').ok_or_else(bad)?;
    let joined_members = count.parse().map_err(|_| bad())?;
    RoomId::parse(room_id).map_err(|_| bad())?;
    Ok(DirectoryCursor { joined_members, room_id: room_id.to_owned(), forward })
}

/// A directory entry as the spec's `PublishedRoomsChunk`.
fn chunk(entry: PublicRoomEntry) -> JsonValue {
    let mut room = Map::new();
    room.insert("room_id".into(), json!(entry.room_id));
    room.insert("num_joined_members".into(), json!(entry.joined_members));
    room.insert("world_readable".into(), json!(entry.history_visibility == Some(HistoryVisibility::WorldReadable)));
    room.insert("guest_can_join".into(), json!(entry.guest_access == Some(GuestAccess::CanJoin)));
    for (key, value) in [
        ("name", entry.name),
        ("topic", entry.topic),
        ("avatar_url", entry.avatar_url),
        ("canonical_alias", entry.canonical_alias),
        ("join_rule", entry.join_rule.map(|rule| rule.as_str().to_owned())),
        ("room_type", entry.room_type),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            room.insert(key.into(), json!(value));
        }
    }
    JsonValue::Object(room)
}

impl Directory {
    /// `GET /directory/list/room/{roomId}`: `true` if published.
    pub async fn room_published(&self, room_id: &RoomId) -> Result<bool, Error> {
        if self.deps.rooms.room(room_id.as_str()).await?.is_none() {
            return Err(Error::NotFound("this server does not know that room".into()));
        }
        Ok(self.deps.store.is_published(room_id.as_str()).await?)
    }

    /// `PUT /directory/list/room/{roomId}`: a server admin, or a joined
    /// member with power to send `m.room.canonical_alias` (Synapse's rule).
    pub async fn set_room_published(&self, user: &AuthedUser, room_id: &RoomId, published: bool) -> Result<(), Error> {
        self.ensure_can_edit_addresses(user, room_id).await?;
        Ok(self.deps.store.set_published(room_id.as_str(), published).await?)
    }

    /// `GET`/`POST /publicRooms`: a page of this server's directory.
    pub async fn public_rooms(&self, req: PublicRoomsRequest) -> Result<JsonValue, Error> {
        if let Some(server) = req.server.as_deref().filter(|s| *s != self.deps.server_name.as_str()) {
            if !self.deps.federation.enabled() {
                // As Synapse answers when federation with that server is
                // not allowed.
                return Err(Error::Forbidden(format!("cannot read the room directory of {server}: federation is off")));
            }
            let server = ServerName::parse(server).map_err(|e| Error::InvalidParam(format!("server: {e}")))?;
            return self.deps.federation.public_rooms(&server, &req).await;
        }
        let limit = match req.limit {
            None | Some(0) => MAX_PUBLIC_ROOMS_LIMIT,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(MAX_PUBLIC_ROOMS_LIMIT),
        };
        let search = req.search.filter(|t| !t.trim().is_empty());
        if search.as_ref().is_some_and(|t| t.len() > MAX_DIRECTORY_SEARCH_TERM_BYTES) {
            return Err(Error::InvalidParam(format!("search terms are at most {MAX_DIRECTORY_SEARCH_TERM_BYTES} bytes")));
        }
        if req.room_types.len() > MAX_DIRECTORY_ROOM_TYPES {
            return Err(Error::InvalidParam(format!("at most {MAX_DIRECTORY_ROOM_TYPES} room types")));
        }
        let cursor = req.since.as_deref().map(parse_cursor).transpose()?;
        if req.third_party_network {
            return Ok(json!({ "chunk": [], "total_room_count_estimate": 0 }));
        }
        let forward = cursor.as_ref().is_none_or(|c| c.forward);
        let had_cursor = cursor.is_some();
        // One more than asked: tells whether another page follows.
        let query = PublicRoomsQuery {
            search: search.map(|t| t.trim().to_owned()),
            room_types: (!req.room_types.is_empty()).then_some(req.room_types),
            cursor,
            limit: limit + 1,
        };
        let mut page = self.deps.store.public_rooms(&query).await?;
        let more = page.rooms.len() > limit;
        if more {
            // The extra room is the one furthest from the cursor.
            if forward {
                page.rooms.truncate(limit);
            } else {
                page.rooms.remove(0);
            }
        }
        // Forward: rooms before exist if we came from a cursor; backward:
        // rooms after the cursor exist.
        let (has_next, has_prev) = if forward { (more, had_cursor) } else { (had_cursor, more) };
        let next_batch = page.rooms.last().filter(|_| has_next).map(|e| format_cursor(e, true));
        let prev_batch = page.rooms.first().filter(|_| has_prev).map(|e| format_cursor(e, false));
        let mut body = json!({
            "chunk": page.rooms.into_iter().map(chunk).collect::<Vec<_>>(),
            "total_room_count_estimate": page.total,
        });
        if let Some(next) = next_batch {
            body["next_batch"] = json!(next);
        }
        if let Some(prev) = prev_batch {
            body["prev_batch"] = json!(prev);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let entry = PublicRoomEntry { room_id: "!a_b:x.org".into(), joined_members: 42, ..Default::default() };
        let next = format_cursor(&entry, true);
        assert_eq!(
            parse_cursor(&next).unwrap(),
            DirectoryCursor { joined_members: 42, room_id: "!a_b:x.org".into(), forward: true }
        );
        assert!(!parse_cursor(&format_cursor(&entry, false)).unwrap().forward);
        for bad in ["", "x1_!a:x", "n_!a:x", "n1", "n1_nope", "nx_!a:x", "n-1_!a:x"] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
