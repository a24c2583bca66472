//! Simplified sliding sync (MSC4186): the user's room list as it sorts
//! and filters, and each connection's memory of what it sent.
//!
//! A connection (a user's device and `conn_id`) moves from position to
//! position: each answer is a new position, recorded with the stream
//! token it was cut at and the rooms whose record changed in it. A
//! room's record is opaque to the store (the service's JSON: what of the
//! room the client holds). The state at a position is, for each room,
//! its newest record at or before that position; it never changes once
//! written, so a node may cache it by (connection, position).
//!
//! Positions are acknowledged by use: an answer built on position P
//! drops what the client can no longer ask for: positions after P (answers
//! it never got) and before P, and the records P's own superseded.

use async_trait::async_trait;
use chancery_proto::ruma::events::room::member::MembershipState;

use crate::StoreResult;

/// Event types that move a room up the list (MSC4186 `bump_stamp`:
/// "proper" activity), with the unstable names clients still send.
pub const BUMP_EVENT_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
    "org.matrix.msc3381.poll.start",
    "org.matrix.msc3672.beacon_info",
];

/// Whether an event of this type bumps its room.
pub fn bumps_room(event_type: &str) -> bool {
    BUMP_EVENT_TYPES.contains(&event_type)
}

/// Whether an event with this type and state key turns on its room's
/// encryption (which is never turned off), for backends recording it
/// with the room.
pub fn enables_encryption(event_type: &str, state_key: Option<&str>) -> bool {
    event_type == "m.room.encryption" && state_key == Some("")
}

/// `content.type` of an `m.room.create` event's JSON (the room type,
/// `m.space` for spaces), for backends recording it with the room.
pub fn room_type_of_create(event_json: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(event_json).ok()?;
    value.get("content")?.get("type")?.as_str().map(str::to_owned)
}

/// One of the user's rooms as the room list sorts and filters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomListEntry {
    pub room_id: String,
    pub membership: MembershipState,
    /// The user's membership event and its position.
    pub membership_event_id: String,
    pub membership_pos: u64,
    /// Position of the room's newest event of a [`BUMP_EVENT_TYPES`] type.
    pub bump_pos: u64,
    /// Position of the room's newest event of any type.
    pub last_pos: u64,
    /// `content.type` of the room's create event.
    pub room_type: Option<String>,
    /// The room has an `m.room.encryption` state event.
    pub encrypted: bool,
    /// The membership is a leave someone else sent (a kick).
    pub kicked: bool,
}

/// What a connection was sent of one room, as the service records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRoom {
    pub room_id: String,
    /// The service's record (JSON), opaque to the store.
    pub record: String,
}

/// A connection's state at one of its positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingPosition {
    pub conn_key: u64,
    pub pos: u64,
    /// The stream token the position's answer was cut at.
    pub token: String,
    /// Each room's newest record at or before `pos` (sorted by room id);
    /// empty unless asked for.
    pub rooms: Vec<SentRoom>,
}

/// Who a connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOwner<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub conn_id: &'a str,
}

#[async_trait]
pub trait SlidingSyncStore: Send + Sync {
    /// The user's rooms for the room list: every room they have a
    /// membership in, with what sorting and filtering need, by room id.
    async fn room_list(&self, user_id: &str) -> StoreResult<Vec<RoomListEntry>>;

    /// What changed in the user's room list after stream position
    /// `after`: their entries of the rooms with an event past it (a
    /// membership change of theirs is such an event), by room id. `None`
    /// when more than `max_rooms` rooms of the server moved on since
    /// (reading the whole list is then cheaper). Every field of an entry
    /// changes only with an event of its room, so a list read at or after
    /// `after` and updated with these entries is the list now.
    async fn room_list_changes(&self, user_id: &str, after: u64, max_rooms: usize) -> StoreResult<Option<Vec<RoomListEntry>>>;

    /// Starts the owner's connection afresh: its previous connection of
    /// this `conn_id` and everything recorded for it go, and a new one
    /// (with a key never used before) takes its place. The device keeps at
    /// most `max_per_device` connections: the least recently used beyond
    /// go too. Returns the new connection's key.
    async fn start_sliding_connection(&self, owner: ConnectionOwner<'_>, now_ts: u64, max_per_device: usize) -> StoreResult<u64>;

    /// The owner's connection `conn_key` at position `pos`, with its rooms
    /// if `with_rooms`. `UnknownPosition` if the owner has no such
    /// connection or it no longer has that position.
    async fn sliding_position(
        &self,
        owner: ConnectionOwner<'_>,
        conn_key: u64,
        pos: u64,
        with_rooms: bool,
    ) -> StoreResult<SlidingPosition>;

    /// Records an answer built on position `base_pos` (0: the first
    /// answer of the connection) as a new position, in one transaction:
    /// the token, the records of `rooms` (at most one per room), what the
    /// client can no longer ask for dropped (positions other than
    /// `base_pos`, records after it and those superseded at it), the
    /// connection's use time. Returns the new position, larger than any
    /// the connection had. `UnknownPosition` if the connection is gone (or
    /// `base_pos` with it).
    async fn record_sliding_answer(
        &self,
        conn_key: u64,
        base_pos: u64,
        token: &str,
        rooms: &[SentRoom],
        now_ts: u64,
    ) -> StoreResult<u64>;

    /// Drops the connections last used before `before_ts`, at most
    /// `max` of them; returns how many went.
    async fn expire_sliding_connections(&self, before_ts: u64, max: usize) -> StoreResult<u64>;
}
