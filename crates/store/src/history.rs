//! A room's history from before this server joined it, fetched from
//! other servers (server-server API "Backfilling") for `/messages`.
//!
//! It is kept apart from the events stream: these events have no stream
//! position, never change the room's state and never reach `/sync`. Per
//! room, each stored event has an ordinal (1 for the newest, growing back
//! in time) that `/messages` pages by, and a frontier holds the ids of
//! the `prev_events` not fetched yet: the walk back through the room's
//! graph goes on from there. A room has history to fetch only once it was
//! opened by a join through another server; rooms created here have none.
//! Events this server also holds in its stream (the state it received
//! with the join) are stored hidden, so the walk goes on through them
//! without showing them twice.

use async_trait::async_trait;

use crate::StoreResult;

/// An event fetched from another server, checked (signatures, hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfilledEvent {
    pub event_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: u64,
    pub depth: u64,
    /// The PDU as canonical JSON (without `event_id`), byte for byte.
    pub json: String,
    /// Its `prev_events`: where the walk back goes on.
    pub prev_events: Vec<String>,
}

/// A stored event of a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    /// 1 for the newest of the room's history, growing back in time.
    pub ordinal: u64,
    pub event_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: u64,
    pub depth: u64,
    pub json: String,
    /// False for an event also in the events stream (not shown twice).
    pub shown: bool,
}

/// What is known of a room's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStatus {
    /// The room was joined through another server: it has history here.
    pub opened: bool,
    /// Ids still to fetch (0: the walk reached the room's start, or its bound).
    pub frontier: u64,
    /// Events stored (shown or hidden).
    pub stored: u64,
}

#[async_trait]
pub trait RoomHistoryStore: Send + Sync {
    /// The room was joined through another server: its history starts at
    /// `frontier` (the join's `prev_events`). Ids already stored are left
    /// out; a second call (a rejoin) adds to the frontier.
    async fn open_history(&self, room_id: &str, frontier: &[String]) -> StoreResult<()>;

    /// What is known of the room's history.
    async fn history_status(&self, room_id: &str) -> StoreResult<HistoryStatus>;

    /// Ids to fetch next, at most `limit`, in no particular order.
    async fn history_frontier(&self, room_id: &str, limit: usize) -> StoreResult<Vec<String>>;

    /// In one transaction: takes `asked` (the ids just asked for) out of
    /// the frontier, whether they came or not; stores `events` (given
    /// newest first; those already stored are skipped), numbering them after the room's
    /// oldest, hidden when the event is also in the events stream; takes
    /// them out of the frontier and adds their `prev_events` that are not
    /// stored. Once the room holds `max_events`, nothing more is stored
    /// and the frontier is emptied: the history stops there. Returns how
    /// many were stored. Does nothing for a room whose history was never
    /// opened.
    async fn add_history(
        &self,
        room_id: &str,
        asked: &[String],
        events: &[BackfilledEvent],
        max_events: u64,
    ) -> StoreResult<usize>;

    /// Shown events with ordinals above `after`, oldest-ward (ordinal
    /// order), at most `limit`.
    async fn history_page(&self, room_id: &str, after: u64, limit: usize) -> StoreResult<Vec<HistoryEvent>>;

    /// Stored events (shown or hidden) of `event_type`, in ordinal order,
    /// at most `limit`.
    async fn history_of_type(&self, room_id: &str, event_type: &str, limit: usize) -> StoreResult<Vec<HistoryEvent>>;
}
