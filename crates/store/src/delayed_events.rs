//! Delayed events (MSC4140): events a user scheduled to be sent later,
//! kept until they fire, are cancelled, or are sent on request.
//!
//! A delayed event is *scheduled* until a node *claims* it to send it.
//! Claiming is atomic (one node wins, on every backend) and moves the
//! row's `send_ts` to the end of a lease: a node that dies while sending
//! leaves a claim that any node takes again once the lease is over. The
//! event is then sent with its `delay_id` as transaction id, so a second
//! send after a crash finds the first one's event instead of sending
//! twice. Once sent (or given up), the row is deleted.
//!
//! A state event appended to a room (`RoomStore::append_event`,
//! `create_room`, `upgrade_room`, any path) cancels, in its own
//! transaction, the scheduled delayed state events of every other user at
//! its `(room_id, type, state_key)`: they would overwrite state their
//! sender never saw (Synapse cancels them likewise). The sender's own
//! stay, and so do claimed ones (being sent).

use async_trait::async_trait;
use serde_json::Value as JsonValue;

use crate::StoreResult;

/// One delayed event as scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayedEvent {
    /// The secret a client or an external service manages it by.
    pub delay_id: String,
    /// Its sender (a local user) and the device that scheduled it.
    pub user_id: String,
    pub device_id: String,
    pub room_id: String,
    pub event_type: String,
    /// Present for a state event.
    pub state_key: Option<String>,
    /// The content as the client sent it.
    pub content: JsonValue,
    /// The delay asked for; a restart moves `send_ts` to now plus this.
    pub delay_ms: u64,
    /// When it is due (for a claimed row: when its claim runs out).
    pub send_ts: u64,
    /// The transaction id of the `/send` request that scheduled it (none
    /// for state events): a retried request finds this row.
    pub txn_id: Option<String>,
}

#[async_trait]
pub trait DelayedEventStore: Send + Sync {
    /// Schedules `event`, unless the same device already scheduled one
    /// with the same `txn_id` (a retried request): then that one's
    /// `delay_id`, nothing written. Otherwise the new event's `delay_id`.
    /// `TooManyDelayedEvents` (with the user's earliest `send_ts`) when
    /// the user already has `max_per_user` delayed events, counted in the
    /// same transaction.
    async fn schedule_delayed_event(&self, event: &DelayedEvent, max_per_user: usize) -> StoreResult<String>;

    /// The user's scheduled (unclaimed) delayed events, soonest first, at
    /// most `limit`.
    async fn delayed_events_of_user(&self, user_id: &str, limit: usize) -> StoreResult<Vec<DelayedEvent>>;

    /// Moves a scheduled event's `send_ts` to `now_ts` plus its delay and
    /// answers it; `None` when no scheduled event has this id (unknown,
    /// already claimed, gone).
    async fn restart_delayed_event(&self, delay_id: &str, now_ts: u64) -> StoreResult<Option<u64>>;

    /// Deletes a scheduled event; false when no scheduled event has this id.
    async fn cancel_delayed_event(&self, delay_id: &str) -> StoreResult<bool>;

    /// Claims one scheduled event whatever its `send_ts` (a client's
    /// `send`), until `lease_until_ts`; the event as it was scheduled, or
    /// `None` when no scheduled event has this id.
    async fn claim_delayed_event(&self, delay_id: &str, lease_until_ts: u64) -> StoreResult<Option<DelayedEvent>>;

    /// Claims up to `limit` events due at `now_ts` (scheduled ones whose
    /// `send_ts` passed, and claims whose lease ran out), soonest first,
    /// until `lease_until_ts`. Two callers never get the same event while
    /// its lease runs.
    async fn claim_due_delayed_events(&self, now_ts: u64, lease_until_ts: u64, limit: usize) -> StoreResult<Vec<DelayedEvent>>;

    /// Gives a claimed event back, scheduled again at `send_ts` (its send
    /// failed in a way that may pass).
    async fn release_delayed_event(&self, delay_id: &str, send_ts: u64) -> StoreResult<()>;

    /// Deletes an event once it was sent or given up (claimed or not).
    async fn finish_delayed_event(&self, delay_id: &str) -> StoreResult<()>;

    /// The earliest `send_ts` of every delayed event, claimed ones
    /// included: when the firing task has something to do next.
    async fn next_delayed_event_ts(&self) -> StoreResult<Option<u64>>;
}
