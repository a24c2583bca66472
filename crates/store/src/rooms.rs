//! Rooms and their events.
//!
//! Events are stored as the full signed PDU (canonical JSON) plus the
//! columns we query by. Every event gets a position in one stream
//! (`stream_pos`, strictly increasing in commit order: see ARCHITECTURE.md,
//! "Stream positions"); sync tokens and pagination tokens are positions.
//!
//! State is a temporal table: one row per state event, valid from the
//! position of the event that set it (inclusive) until the position of the
//! event that replaced it (exclusive). State at any position is a range
//! query; nothing is copied per event.

use async_trait::async_trait;
use chancery_proto::ruma::RoomVersionId;
use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_proto::ruma::events::room::member::MembershipState;
use serde::{Deserialize, Serialize};

use crate::{NewRelation, StoreResult};

/// Idempotency key of a client send (`PUT /send/{type}/{txnId}`): per
/// device, as the spec requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnKey {
    pub user_id: String,
    pub device_id: String,
    pub txn_id: String,
}

/// An event ready to persist (already authorised by the service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    /// `Some` for state events.
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: u64,
    pub depth: u64,
    /// The signed PDU as canonical JSON.
    pub json: String,
    /// `content.membership` of an `m.room.member` event.
    pub membership: Option<MembershipState>,
    /// The event this one redacts, if it is an `m.room.redaction` the
    /// server accepted.
    pub redacts: Option<String>,
    pub txn: Option<TxnKey>,
    /// Text to index for server-side search, as (key, text) with key one of
    /// `content.body`, `content.name`, `content.topic`. Empty for events
    /// that are not searchable (encrypted ones among them).
    pub search_text: Vec<(String, String)>,
    /// Members this event notifies, per their push rules (each user once).
    pub notifications: Vec<crate::NewNotification>,
    /// The relation to record with the event (see `relations.rs`), if the
    /// service accepted the one in its content.
    pub relates_to: Option<NewRelation>,
}

impl NewEvent {
    /// The user a membership event is about; `None` for other events.
    pub fn member_target(&self) -> Option<&str> {
        (self.event_type == "m.room.member").then_some(self.state_key.as_deref()).flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: u64,
    pub depth: u64,
    pub json: String,
    /// `content.membership` of an `m.room.member` event.
    pub membership: Option<MembershipState>,
    pub stream_pos: u64,
    /// Id of an accepted redaction of this event, if any.
    pub redacted_by: Option<String>,
    /// The transaction id, when the event was sent with one (returned to
    /// the sending device as `unsigned.transaction_id`).
    pub txn: Option<TxnKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    pub room_id: String,
    pub room_version: RoomVersionId,
    pub creator: String,
    pub created_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub room_id: String,
    pub room_version: RoomVersionId,
    pub creator: String,
    pub created_ts: u64,
    /// Events with no successor yet (the `prev_events` of the next event).
    pub forward_extremities: Vec<String>,
    /// Largest depth in the room.
    pub max_depth: u64,
}

/// A user's membership in a room, as of the event that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub room_id: String,
    pub user_id: String,
    pub membership: MembershipState,
    pub event_id: String,
    pub stream_pos: u64,
}

/// What `RoomStore::member_summary` reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSummary {
    pub joined: u64,
    pub invited: u64,
    pub heroes: Vec<String>,
}

/// What a [`StateSpan`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanKind {
    /// The room's `m.room.history_visibility`: its `content.history_visibility`
    /// (`None` if missing or not a string).
    HistoryVisibility(Option<HistoryVisibility>),
    /// A user's `content.membership`.
    Membership(MembershipState),
}

/// A stretch of a room's history during which one state event was in
/// force: positions `from_pos <= p < to_pos` (`to_pos` `None`: still is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSpan {
    pub room_id: String,
    pub from_pos: u64,
    pub to_pos: Option<u64>,
    pub kind: SpanKind,
}

/// A room version read back from the database (written from a
/// [`RoomVersionId`], so anything else is a corrupt row).
pub fn stored_room_version(stored: &str) -> StoreResult<RoomVersionId> {
    RoomVersionId::try_from(stored).map_err(|e| crate::StoreError::Backend(format!("stored room version {stored:?}: {e}")))
}

/// `content.history_visibility` of an `m.room.history_visibility` event's
/// JSON, for backends building [`SpanKind::HistoryVisibility`].
pub fn history_visibility_of(event_json: &str) -> Option<HistoryVisibility> {
    let value: serde_json::Value = serde_json::from_str(event_json).ok()?;
    value.get("content")?.get("history_visibility")?.as_str().map(HistoryVisibility::from)
}

#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Creates the room and persists its first events in order, all in one
    /// transaction. `RoomIdTaken` if the id exists. Returns the
    /// stream position of the last event.
    async fn create_room(&self, room: NewRoom, events: Vec<NewEvent>) -> StoreResult<u64>;

    /// Replaces a room this server knew only through invites of its users
    /// (a room of another server: no create event in its state) by the
    /// room as a join over federation made it known, in one transaction:
    /// the stub's events, state and extremities go, then the room is
    /// created from `events` as [`Self::create_room`] does. `UnknownRoom`
    /// if there is no such stub.
    async fn replace_stub_room(&self, room: NewRoom, events: Vec<NewEvent>) -> StoreResult<u64>;

    /// Appends one event whose `prev_events` are `prev_extremities`.
    /// `StaleExtremities` if the room's forward extremities are no
    /// longer exactly those (another writer went first: re-read and
    /// rebuild), `TransactionIdUsed` if the transaction key was used. In one
    /// transaction: the event, its stream position, the new extremities
    /// (just this event), the state table if it is a state event, the
    /// redaction link if it redacts (which also breaks the target's
    /// relation), the event's own relation, the transaction key. Returns
    /// the event's stream position.
    ///
    /// The write is queued by the time the future is first polled, and
    /// queued appends commit in that order: a caller may build a room's next
    /// event on one still being committed (if that one fails, the next fails
    /// with `StaleExtremities`).
    async fn append_event(&self, event: NewEvent, prev_extremities: &[String]) -> StoreResult<u64>;

    async fn room(&self, room_id: &str) -> StoreResult<Option<RoomInfo>>;

    async fn event(&self, event_id: &str) -> StoreResult<Option<StoredEvent>>;

    /// The event a device sent with this transaction id, if any.
    async fn event_for_txn(&self, txn: &TxnKey) -> StoreResult<Option<String>>;

    /// State events of the room at stream position `at` (the state after
    /// the event at that position), or the current state if `None`. Sorted
    /// by (type, state_key).
    async fn state_at(&self, room_id: &str, at: Option<u64>) -> StoreResult<Vec<StoredEvent>>;

    /// [`Self::state_at`] without the member events but those of `members`
    /// (lazy-loading members): its cost follows the room's other state, not
    /// its member count.
    async fn state_at_with_members(&self, room_id: &str, at: Option<u64>, members: &[String]) -> StoreResult<Vec<StoredEvent>>;

    /// The current state events of these (type, state key) pairs that
    /// exist, in one round trip (at most [`MAX_STATE_KEYS_PER_READ`]).
    async fn current_state_events(&self, room_id: &str, keys: &[(String, String)]) -> StoreResult<Vec<StoredEvent>>;

    /// The current state events of one type, sorted by state key, at most
    /// `limit` of them (a space's `m.space.child` links: their state keys
    /// are the children, not known beforehand). Costs what those events
    /// cost, not the room's whole state.
    async fn current_state_of_type(&self, room_id: &str, event_type: &str, limit: usize) -> StoreResult<Vec<StoredEvent>>;

    /// One state event at `at` (or now).
    async fn state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        at: Option<u64>,
    ) -> StoreResult<Option<StoredEvent>>;

    /// State events that took effect at positions in `(after, up_to]`,
    /// only the last one per (type, state_key) and only if it is still the
    /// one in force at `up_to`. Sorted by position.
    async fn state_changes(&self, room_id: &str, after: u64, up_to: u64) -> StoreResult<Vec<StoredEvent>>;

    /// Events of a room with positions in `(after, up_to]`, at most
    /// `limit`: the newest ones first if `newest_first`, else the oldest
    /// ones first.
    async fn room_events(
        &self,
        room_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
        newest_first: bool,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// The user's current membership in every room they have one in.
    async fn memberships_of_user(&self, user_id: &str) -> StoreResult<Vec<Membership>>;

    /// Current members of a room (every membership state, any value).
    async fn members_of_room(&self, room_id: &str) -> StoreResult<Vec<Membership>>;

    /// The room's joined and invited counts and up to `heroes` other users
    /// than `user_id` for its name (spec `m.heroes`): the first joined or
    /// invited members by stream order, else the first who left or were
    /// banned. Costs the same whatever the room's size.
    async fn member_summary(&self, room_id: &str, user_id: &str, heroes: usize) -> StoreResult<MemberSummary>;

    /// What decides which events of `rooms` `user_id` may read (spec "Room
    /// History Visibility"): the spans of each room's
    /// `m.room.history_visibility` that overlap positions `from..=up_to`,
    /// and every span of the user's membership that ends after `from` (the
    /// rule for `shared` looks at later joins too). Ordered by room, then
    /// start. `TooManyVisibilitySpans` if there are more than
    /// `limit`.
    async fn visibility_spans(
        &self,
        user_id: &str,
        rooms: &[String],
        from: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<StateSpan>>;

    /// The highest stream position whose event is committed. Every
    /// position at or below it is visible to readers.
    async fn current_stream_pos(&self) -> StoreResult<u64>;
}

/// Most keys [`RoomStore::current_state_events`] takes (the auth rules
/// name at most five).
pub const MAX_STATE_KEYS_PER_READ: usize = 16;
