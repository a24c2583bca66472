//! The outbound federation queue (server-server API, "Transactions").
//!
//! The events table is the queue: nothing is copied. Per destination
//! server a persisted `sent_pos` says up to which stream position its
//! events were acknowledged; the sender reads the next events for it with
//! [`FederationStore::federation_events_for`] and moves `sent_pos` after
//! the destination's 200. A persisted discovery position says up to
//! which position membership changes were looked at for new
//! destinations, so a destination that appeared just before a restart is
//! still found after it.
//!
//! EDUs that must not be lost (to-device messages, device-list and
//! cross-signing updates) wait in a per-destination outbox until the
//! destination acknowledged a transaction holding them
//! ([`FederationStore::queue_federation_edus`]): they ride in the same
//! transactions as the destination's events. The outbox is bounded per
//! destination in count and age; past either the oldest go.
//!
//! Server names are compared exactly with the part of a user id after its
//! first `:` (user ids are `@local:server`, `local` holds no `:`; a server
//! name may hold a port, `127.0.0.1:8448`).

use async_trait::async_trait;

use crate::StoreResult;

/// An event to send to another server, as stored: the signed PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingPdu {
    pub stream_pos: u64,
    pub event_id: String,
    /// The PDU as canonical JSON (without `event_id`), byte for byte.
    pub json: String,
}

/// What the sender persisted: where discovery stopped (`None` before the
/// first start) and each known destination's acknowledged position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederationSenderState {
    pub scanned_pos: Option<u64>,
    /// (server name, sent_pos), by server name.
    pub destinations: Vec<(String, u64)>,
}

/// An EDU to queue for a destination server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboundEdu {
    pub destination: String,
    /// The whole EDU (`{"edu_type": …, "content": …}`) as JSON text.
    pub json: String,
}

/// An EDU waiting in a destination's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundEdu {
    /// Increasing in queue order: a destination's EDUs go in id order.
    pub id: u64,
    pub json: String,
}

/// The bounds of one destination's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EduOutboxLimits {
    /// EDUs kept per destination; queueing more drops the oldest.
    pub max_per_destination: usize,
    /// EDUs queued this long ago or longer are dropped when read.
    pub max_age_ms: u64,
}

/// A destination's oldest waiting EDUs, and how many expired ones the
/// read dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuedEdus {
    pub edus: Vec<OutboundEdu>,
    pub expired: u64,
}

#[async_trait]
pub trait FederationStore: Send + Sync {
    /// The highest committed event position; every event at or below it
    /// is visible (as `RoomStore::current_stream_pos`).
    async fn federation_stream_pos(&self) -> StoreResult<u64>;

    /// Servers other than `our_server` that membership changes at
    /// positions `after < p <= upto` made destinations, each with the
    /// first such position, in order of it (at most `limit`):
    /// - a remote user's membership event sent by a local user (invites,
    ///   kicks, bans), or in a room where a local user is joined now;
    /// - a local user's join: the servers of the room's joined members now.
    async fn new_federation_destinations(
        &self,
        our_server: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>>;

    /// The events at positions `after < p <= upto` that go to
    /// `destination` (another server than `our_server`), in position
    /// order, at most `limit`: sent by a local
    /// user (of `our_server`), in a room that does not say
    /// `m.federate: false`, and either a membership event about one of
    /// the destination's users, or in a room where one of them is joined
    /// right after the event (the room's state at its position).
    async fn federation_events_for(
        &self,
        our_server: &str,
        destination: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutgoingPdu>>;

    /// The persisted state (at most `limit` destinations).
    async fn federation_sender_state(&self, limit: usize) -> StoreResult<FederationSenderState>;

    /// In one transaction: adds these destinations (server, sent_pos)
    /// where they have no row (a known one keeps its position), and sets
    /// the discovery position to `scanned_pos`.
    async fn add_federation_destinations(&self, destinations: &[(String, u64)], scanned_pos: u64) -> StoreResult<()>;

    /// In one transaction: appends `edus` to their destinations' outboxes
    /// (in the order given, queued at `now_ms`), then drops the oldest of
    /// each destination touched past `limits.max_per_destination`.
    /// Returns (destination, how many were dropped) for those that lost
    /// any.
    async fn queue_federation_edus(
        &self,
        edus: &[NewOutboundEdu],
        now_ms: u64,
        limits: EduOutboxLimits,
    ) -> StoreResult<Vec<(String, u64)>>;

    /// The oldest EDUs (at most `limit`, in id order) waiting for
    /// `destination`; those queued at or before `now_ms -
    /// limits.max_age_ms` are deleted first, in the same transaction, and
    /// counted in `expired`.
    async fn federation_edus_for(
        &self,
        destination: &str,
        now_ms: u64,
        limits: EduOutboxLimits,
        limit: usize,
    ) -> StoreResult<QueuedEdus>;

    /// The destinations with EDUs waiting (at most `limit`, by name).
    async fn federation_edu_destinations(&self, limit: usize) -> StoreResult<Vec<String>>;

    /// `destination` acknowledged a transaction: in one transaction, its
    /// position moves to `sent_pos` (never back: a late answer of an older
    /// attempt changes nothing; the row is created if missing) and the EDUs
    /// `edu_ids` leave its outbox (ids no longer there are passed over).
    async fn federation_transaction_acknowledged(&self, destination: &str, sent_pos: u64, edu_ids: &[u64]) -> StoreResult<()>;
}
