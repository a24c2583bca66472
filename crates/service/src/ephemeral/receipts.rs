//! Read receipts (client-server API "Receipts") and the fully-read marker
//! ("Read and unread markers").
//!
//! A receipt names an event of the room the user is joined to and may see
//! (history visibility; one they may not see is answered as a missing one
//! is); threaded receipts (spec v1.4) name `main` or a thread root of the
//! same room, under the same rule.
//! Whether the receipt's event really belongs to that thread is not
//! checked yet (relations are not indexed); clients only send receipts for
//! events they display in that thread.

use std::collections::{BTreeMap, HashSet};

use chancery_proto::limits::MAX_RECEIPT_THREADS_PER_ROOM;
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::{NewReceipt, Receipt};
use serde_json::{Value as JsonValue, json};

use super::Ephemeral;
use crate::account_data::FULLY_READ;
use crate::rooms::state::{ensure_joined, event_of_room};
use crate::{AuthedUser, Error};

pub(super) const READ: &str = "m.read";
/// The answer for an event that does not exist, or that the user may not see.
const NO_SUCH_EVENT: &str = "no such event in this room";
pub(crate) const READ_PRIVATE: &str = "m.read.private";

/// Which thread a receipt is for (spec "Threaded read receipts").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptThread {
    Unthreaded,
    Main,
    /// A thread root's event id, as the client sent it.
    Root(String),
}

impl Ephemeral {
    /// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`. `m.fully_read`
    /// is accepted here too (spec: "effectively calls /read_markers").
    pub async fn send_receipt(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread: ReceiptThread,
    ) -> Result<(), Error> {
        if ![READ, READ_PRIVATE, FULLY_READ].contains(&receipt_type) {
            return Err(Error::InvalidParam(format!("unknown receipt type {receipt_type}")));
        }
        if receipt_type == FULLY_READ && thread != ReceiptThread::Unthreaded {
            return Err(Error::InvalidParam("m.fully_read takes no thread_id".into()));
        }
        self.deps.limiters.receipts_per_user.check_user(user)?;
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let root = match &thread {
            ReceiptThread::Root(root) if EventId::parse(root.as_str()).is_ok() => Some(root.as_str()),
            _ => None,
        };
        let seen = self.seen_events(user, room_id, [Some(event_id.as_str()), root]).await?;
        if !seen.contains(event_id.as_str()) {
            return Err(Error::NotFound(NO_SUCH_EVENT.into()));
        }
        let thread_id = match thread {
            ReceiptThread::Unthreaded => None,
            ReceiptThread::Main => Some("main".to_owned()),
            ReceiptThread::Root(root) => {
                if EventId::parse(root.as_str()).is_err() {
                    return Err(Error::InvalidParam("thread_id must be \"main\" or an event id".into()));
                }
                if !seen.contains(root.as_str()) {
                    return Err(Error::InvalidParam("thread_id is not an event of this room".into()));
                }
                Some(root)
            }
        };
        if receipt_type == FULLY_READ {
            return self.deps.account_data.set_fully_read(user, room_id, event_id).await;
        }
        self.put_receipt(user, room_id, receipt_type, event_id, thread_id.clone()).await?;
        if receipt_type == READ {
            self.deps.edus.receipt(room_id, &user.user_id, event_id.as_str(), thread_id.as_deref());
        }
        Ok(())
    }

    /// `POST /rooms/{roomId}/read_markers`: the fully-read marker and/or
    /// unthreaded receipts, each as its own endpoint would set it.
    pub async fn set_read_markers(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        fully_read: Option<&EventId>,
        read: Option<&EventId>,
        read_private: Option<&EventId>,
    ) -> Result<(), Error> {
        self.deps.limiters.receipts_per_user.check_user(user)?;
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let named = [fully_read, read, read_private];
        let seen = self.seen_events(user, room_id, named.map(|e| e.map(EventId::as_str))).await?;
        if named.into_iter().flatten().any(|e| !seen.contains(e.as_str())) {
            return Err(Error::NotFound(NO_SUCH_EVENT.into()));
        }
        if let Some(event_id) = fully_read {
            self.deps.account_data.set_fully_read(user, room_id, event_id).await?;
        }
        if let Some(event_id) = read {
            self.put_receipt(user, room_id, READ, event_id, None).await?;
        }
        if let Some(event_id) = read_private {
            self.put_receipt(user, room_id, READ_PRIVATE, event_id, None).await?;
        }
        Ok(())
    }

    /// Which of `event_ids` name events of the room the user may see
    /// (history visibility), judged together in one read. The others are
    /// answered as missing events are, so a receipt cannot probe for
    /// events hidden from the user.
    async fn seen_events<const N: usize>(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_ids: [Option<&str>; N],
    ) -> Result<HashSet<String>, Error> {
        let mut events = Vec::with_capacity(N);
        for event_id in event_ids.into_iter().flatten() {
            events.extend(event_of_room(&*self.deps.rooms, room_id, event_id).await?);
        }
        let seen = self.deps.visibility.visible_events(&user.user_id, room_id.as_str(), events).await?;
        Ok(seen.into_iter().map(|e| e.event_id).collect())
    }

    pub(super) async fn put_receipt(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: Option<String>,
    ) -> Result<(), Error> {
        let receipt = NewReceipt {
            room_id: room_id.to_string(),
            user_id: user.user_id.to_string(),
            receipt_type: receipt_type.to_owned(),
            thread_id,
            event_id: event_id.to_string(),
            ts: self.deps.clock.now_ms(),
        };
        self.deps.receipts.set_receipt(receipt, MAX_RECEIPT_THREADS_PER_ROOM).await?;
        self.deps.notifier.room(room_id.as_str());
        // Both read receipt types clear notifications (spec "Marking
        // notifications as read"): the badge may have gone down.
        self.deps.pushers.user_read(user.user_id.as_str());
        Ok(())
    }

    /// The room's receipts at positions in `(after, up_to]` as `m.receipt`
    /// events for `viewer`'s `/sync`.
    pub(crate) async fn receipt_events(
        &self,
        room_id: &str,
        after: u64,
        up_to: u64,
        viewer: &str,
    ) -> Result<Vec<JsonValue>, Error> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        let receipts = self.deps.receipts.room_receipts(room_id, after, up_to).await?;
        Ok(receipt_events(&receipts, viewer))
    }
}

/// `m.receipt` events for these receipts, one per thread (spec
/// "Receipts", server behaviour: batched "into one event per room and
/// thread", which also keeps a user's unthreaded and threaded receipts on
/// one event apart). Private receipts only reach their owner.
fn receipt_events(receipts: &[Receipt], viewer: &str) -> Vec<JsonValue> {
    let mut by_thread: BTreeMap<Option<&str>, JsonValue> = BTreeMap::new();
    for r in receipts.iter().filter(|r| r.receipt_type != READ_PRIVATE || r.user_id == viewer) {
        let content = by_thread.entry(r.thread_id.as_deref()).or_insert_with(|| json!({}));
        let mut receipt = json!({ "ts": r.ts });
        if let Some(thread_id) = &r.thread_id {
            receipt["thread_id"] = json!(thread_id);
        }
        content[r.event_id.as_str()][r.receipt_type.as_str()][r.user_id.as_str()] = receipt;
    }
    by_thread.into_values().map(|content| json!({ "type": "m.receipt", "content": content })).collect()
}
