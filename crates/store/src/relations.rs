//! Relations between events (client-server API "Forming relationships
//! between events"): edits (`m.replace`), threads (`m.thread`), reactions
//! (`m.annotation`), references (`m.reference`) and any other `rel_type`.
//!
//! A relation is recorded in the same transaction as its event, from
//! [`NewEvent::relates_to`](crate::NewEvent::relates_to), which the service
//! sets only for relations it accepted (same room, known parent, the rules
//! of the relation type). Relations live in their own table rather than as
//! columns of `events`: most events have none, and the table's indexes
//! (children of a parent by type and position) then cost nothing for them.
//!
//! An accepted redaction of a child breaks its relation (spec "Aggregations
//! of child events": "when a child event is redacted then the relationship
//! is broken"), so the store deletes the relation in the redaction's
//! transaction and no read below has to filter redacted children.
//!
//! Threads are also kept per root with the position of their latest reply,
//! so `/threads` pages through a room's threads by recency without
//! scanning every reply of the room.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::{PositionRange, StoreResult, StoredEvent};

/// The relation an event declares in `content["m.relates_to"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelation {
    /// The parent: the event this one relates to.
    pub parent: String,
    pub rel_type: String,
    /// The annotation key of an `m.annotation` (e.g. the emoji of a
    /// reaction), `None` for other relation types.
    pub key: Option<String>,
}

/// Children of one parent, one page of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationsQuery {
    pub room_id: String,
    pub parent: String,
    /// Only children with this relation type (for every level when
    /// recursing).
    pub rel_type: Option<String>,
    /// Only children of this event type.
    pub event_type: Option<String>,
    /// Children with positions in `(after, up_to]`.
    pub after: u64,
    pub up_to: u64,
    pub limit: usize,
    pub newest_first: bool,
    /// 1: direct children only; n: also the children of children, up to n
    /// relations away from the parent.
    pub max_depth: u32,
}

/// The `m.thread` aggregation of a thread root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSummary {
    pub root: String,
    /// The thread's most recent reply (by stream position).
    pub latest: StoredEvent,
    /// Replies in the thread.
    pub count: u64,
    /// The viewer sent the root or a reply (spec `current_user_participated`).
    pub participated: bool,
}

/// What the server bundles under `unsigned["m.relations"]` for a page of
/// events, fetched for the whole page at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundledAggregations {
    /// `(original, its most recent edit)`: the `m.replace` child by the
    /// original's sender with the largest `(origin_server_ts, event_id)`.
    pub edits: Vec<(String, StoredEvent)>,
    pub threads: Vec<ThreadSummary>,
    /// `(parent, event id of an m.reference child)`, oldest first per
    /// parent, at most `max_references` per parent.
    pub references: Vec<(String, String)>,
    /// The stream position of each child in `references`, by event id, so
    /// a reader can judge whether the viewer may see it (history
    /// visibility) without loading it.
    pub reference_positions: BTreeMap<String, u64>,
}

/// A thread root with the position of its latest reply, which orders
/// `/threads` and is its pagination token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRoot {
    pub root: StoredEvent,
    pub latest_pos: u64,
}

/// Annotations of one event with one (event type, key), counted once per
/// sender (spec "Event annotations": identical annotations of one sender
/// count as one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationCount {
    pub event_type: String,
    pub key: String,
    pub count: u64,
}

#[async_trait]
pub trait RelationStore: Send + Sync {
    /// The children (and with `max_depth > 1` further descendants) of a
    /// parent in its room, ordered by position.
    async fn relations(&self, query: &RelationsQuery) -> StoreResult<Vec<StoredEvent>>;

    /// Thread roots of a room, the most recently active first, whose latest
    /// reply is at a position below `before` (all if `None`), at most
    /// `limit`. With `participant`, only threads that user started or
    /// replied in.
    async fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<ThreadRoot>>;

    /// Edits, thread summaries (with `viewer`'s participation) and
    /// references of these events, fetched together: a few statements for
    /// a whole page instead of a few per event. Each part is consistent in
    /// itself (a thread's count and latest reply come from one statement).
    async fn bundled_aggregations(
        &self,
        event_ids: &[String],
        viewer: &str,
        max_references: usize,
    ) -> StoreResult<BundledAggregations>;

    /// Annotations of `parent` grouped by (event type, key), the most
    /// frequent first; with `sender`, only that sender's.
    async fn annotation_counts(&self, parent: &str, sender: Option<&str>) -> StoreResult<Vec<AnnotationCount>>;

    /// How many replies each of `roots` (thread roots of one room) has at
    /// positions within `within`: the replies a reader may see, when
    /// history visibility hides some (an empty `within`: none). Every root
    /// is answered, with 0 if it has none there. Costs what the thread
    /// count of [`Self::bundled_aggregations`] costs.
    async fn thread_reply_counts(&self, roots: &[String], within: &[PositionRange]) -> StoreResult<Vec<(String, u64)>>;

    /// The room's event closest to `ts` (milliseconds since the epoch):
    /// the first at or after it if `forward`, else the last at or before
    /// it. Ties of timestamps go to the earliest (forward) or latest
    /// (backward) position.
    async fn event_near_ts(&self, room_id: &str, ts: u64, forward: bool) -> StoreResult<Option<StoredEvent>> {
        self.event_near_ts_within(room_id, ts, forward, &[PositionRange::ALL]).await
    }

    /// [`Self::event_near_ts`] among the events at positions within
    /// `within` (the parts of the room a reader may see; empty: none).
    /// With anything but the whole room, the walk along timestamps passes
    /// over the events outside `within`, so it grows with the hidden part
    /// of the room between `ts` and the answer.
    async fn event_near_ts_within(
        &self,
        room_id: &str,
        ts: u64,
        forward: bool,
        within: &[PositionRange],
    ) -> StoreResult<Option<StoredEvent>>;
}
