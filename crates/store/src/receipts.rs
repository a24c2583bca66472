//! Read receipts (client-server API "Receipts"): per room, user, receipt
//! type and thread, the event read up to.
//!
//! Receipts have their own stream (positions separate from events and
//! account data), with the same promise: everything at or below
//! [`ReceiptStore::current_receipt_pos`] is visible. A new receipt replaces
//! the previous one of its (room, user, type, thread) and takes the new
//! position, so a range query returns the receipts that changed in it.

use async_trait::async_trait;

use crate::StoreResult;

/// A receipt to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReceipt {
    pub room_id: String,
    pub user_id: String,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
    /// `None` for an unthreaded receipt; `main` or a thread root's event id.
    pub thread_id: Option<String>,
    pub event_id: String,
    pub ts: u64,
}

/// A stored receipt, as of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: Option<String>,
    pub event_id: String,
    pub ts: u64,
    pub stream_pos: u64,
}

#[async_trait]
pub trait ReceiptStore: Send + Sync {
    /// Sets the user's receipt of this type and thread in the room,
    /// replacing the previous one, and returns its new position in the
    /// receipts stream. `TooManyReceiptThreads` if the user would hold
    /// more than `max_threads` receipts of this type in the room (one per
    /// thread, plus the unthreaded one); replacing is always allowed.
    async fn set_receipt(&self, receipt: NewReceipt, max_threads: usize) -> StoreResult<u64>;

    /// The room's receipts whose last change is at a position in
    /// `(after, up_to]`, sorted by position; `after = 0` gives all current
    /// receipts of the room.
    async fn room_receipts(&self, room_id: &str, after: u64, up_to: u64) -> StoreResult<Vec<Receipt>>;

    /// The highest receipt position whose change is committed; every
    /// position at or below it is visible to readers.
    async fn current_receipt_pos(&self) -> StoreResult<u64>;
}
