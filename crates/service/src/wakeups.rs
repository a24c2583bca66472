//! Wake-ups of long-polling syncs for changes outside the events stream:
//! account data, receipts and typing. (Event writes wake syncs through
//! `RoomRuntime.stream`.)
//!
//! One counter for the whole node: every waiting sync wakes on every such
//! change and re-reads its own view, which is cheap while there are few
//! waiters per node. A wake-up keyed by user and room belongs with the
//! cross-node notifications (PostgreSQL LISTEN/NOTIFY) still to come.

use tokio::sync::watch;

pub(crate) struct SideStreamWakeups {
    changes: watch::Sender<u64>,
}

impl SideStreamWakeups {
    pub(crate) fn new() -> Self {
        Self { changes: watch::channel(0).0 }
    }

    /// Something a sync may deliver changed on this node.
    pub(crate) fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
