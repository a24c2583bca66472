//! Room addresses and the published room directory.
//!
//! A local alias (`#name:our.server`) maps to one room; the directory is
//! the set of rooms published in `/publicRooms`. Two room operations must
//! change them together with room events, so they live here as one
//! transaction each: creating a room with its first alias and listing,
//! and upgrading a room (tombstone in the old room, the new room, and its
//! addresses moved over) — a crash never leaves an alias pointing at a
//! room that was not created, or a tombstone without its replacement.

use async_trait::async_trait;
use chancery_proto::ruma::events::room::guest_access::GuestAccess;
use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_proto::ruma::room::JoinRuleKind;

use crate::{NewEvent, NewRoom, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAlias {
    /// The full alias, `#localpart:server`.
    pub alias: String,
    pub room_id: String,
    /// Who created it (may delete it even without power in the room).
    pub creator: String,
    pub created_ts: u64,
}

/// Addresses a new room gets in the transaction that creates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomAddresses {
    /// Each must name the new room.
    pub aliases: Vec<RoomAlias>,
    /// List the room in the published room directory.
    pub publish: bool,
}

/// Everything an upgrade writes, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomUpgrade {
    pub old_room_id: String,
    /// The old room's forward extremities the first old-room event was
    /// built on.
    pub old_extremities: Vec<String>,
    /// Events appended to the old room in order (the tombstone first),
    /// each built on the one before.
    pub old_room_events: Vec<NewEvent>,
    pub new_room: NewRoom,
    pub new_room_events: Vec<NewEvent>,
}

/// Where a `/publicRooms` page starts: after (forward) or before
/// (backward) this entry in the directory order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryCursor {
    pub joined_members: u64,
    pub room_id: String,
    pub forward: bool,
}

/// A page request on the published room directory. The directory order is
/// joined members descending, then room id ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicRoomsQuery {
    /// Matched, ASCII case-insensitively, anywhere in the name, topic or
    /// canonical alias.
    pub search: Option<String>,
    /// Only rooms of these `m.room.create` types; `None` in the list means
    /// rooms without a type. `None` (or an empty list): any type.
    pub room_types: Option<Vec<Option<String>>>,
    pub cursor: Option<DirectoryCursor>,
    pub limit: usize,
}

/// One published room as the directory shows it, read from its current
/// state. Fields a redaction stripped are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicRoomEntry {
    pub room_id: String,
    pub joined_members: u64,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar_url: Option<String>,
    pub canonical_alias: Option<String>,
    pub join_rule: Option<JoinRuleKind>,
    pub history_visibility: Option<HistoryVisibility>,
    pub guest_access: Option<GuestAccess>,
    pub room_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicRoomsPage {
    /// In directory order (also for a backward page).
    pub rooms: Vec<PublicRoomEntry>,
    /// Rooms published on the server, whether or not the query matched them.
    pub total: u64,
}

#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// Maps `alias` to its room. `AliasTaken` if the alias exists,
    /// `UnknownRoom` if the room does not, `TooManyAliases`
    /// if the room already has `max_per_room` aliases.
    async fn create_alias(&self, alias: &RoomAlias, max_per_room: usize) -> StoreResult<()>;

    async fn alias(&self, alias: &str) -> StoreResult<Option<RoomAlias>>;

    /// Returns false if there was no such alias.
    async fn delete_alias(&self, alias: &str) -> StoreResult<bool>;

    /// The room's local aliases, sorted.
    async fn aliases_of_room(&self, room_id: &str) -> StoreResult<Vec<String>>;

    /// Publishes the room in the directory or removes it (either is
    /// idempotent). `UnknownRoom` if the room does not exist.
    async fn set_published(&self, room_id: &str, published: bool) -> StoreResult<()>;

    async fn is_published(&self, room_id: &str) -> StoreResult<bool>;

    /// A page of published rooms that are joinable without an invite
    /// (join rule `public`, `knock` or `knock_restricted`) or readable
    /// without joining (`world_readable`), matching the query, at most
    /// `query.limit` of them.
    async fn public_rooms(&self, query: &PublicRoomsQuery) -> StoreResult<PublicRoomsPage>;

    /// [`RoomStore::create_room`](crate::RoomStore::create_room) plus the
    /// room's aliases and directory listing, all or nothing.
    /// `AliasTaken` if an alias is taken; `AliasOfAnotherRoom` if an
    /// alias names another room.
    async fn create_room_with_addresses(
        &self,
        room: NewRoom,
        events: Vec<NewEvent>,
        addresses: RoomAddresses,
    ) -> StoreResult<u64>;

    /// Appends the old room's events (`StaleExtremities` if the old
    /// room moved on, `UnknownRoom` if it does not exist), creates the
    /// new room (`RoomIdTaken` if its id exists), and moves every
    /// local alias and the directory listing of the old room to the new
    /// one — all or nothing. Returns the last stream position written.
    async fn upgrade_room(&self, upgrade: RoomUpgrade) -> StoreResult<u64>;
}
