//! The writer's per-room state on this node: the lock that orders a room's
//! writes, the event still being committed, and the room's version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chancery_proto::ruma::{RoomId, RoomVersionId};
use tokio::sync::OwnedMutexGuard;

/// Idle per-room locks are dropped once this many are held.
const MAX_IDLE_ROOM_LOCKS: usize = 10_000;

/// The rooms being written on this node.
#[derive(Default)]
pub(super) struct RoomLocks {
    rooms: Mutex<HashMap<String, Arc<RoomWrites>>>,
}

impl RoomLocks {
    pub(super) fn room(&self, room_id: &RoomId) -> Arc<RoomWrites> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.len() >= MAX_IDLE_ROOM_LOCKS {
            // Held elsewhere means in use: only the map holds idle ones.
            rooms.retain(|_, room| Arc::strong_count(room) > 1);
        }
        Arc::clone(rooms.entry(room_id.to_string()).or_default())
    }
}

/// One room's writes on this node.
#[derive(Default)]
pub(super) struct RoomWrites {
    /// Held while an event is built and queued (and, for events that are
    /// not pipelined, until it is committed).
    pub(super) lock: Arc<tokio::sync::Mutex<()>>,
    /// The last event queued and not yet known to be committed, when the
    /// store commits queued appends in order: the next event is built on
    /// it instead of waiting for its commit.
    pending: Mutex<Option<PendingAppend>>,
    /// The room's version once read (it never changes).
    pub(super) room_version: OnceLock<RoomVersionId>,
}

#[derive(Clone)]
pub(super) struct PendingAppend {
    pub(super) event_id: String,
    pub(super) depth: u64,
    /// Turns true once its write is settled (committed or failed); closed
    /// if the request that queued it was dropped.
    pub(super) settled: tokio::sync::watch::Receiver<bool>,
}

/// A room's lock held with nothing of this node pending in it.
pub(crate) struct ExclusiveRoom {
    _guard: OwnedMutexGuard<()>,
    /// Keeps the room's entry in use, so no second lock is made for it.
    _room: Arc<RoomWrites>,
}

impl RoomWrites {
    pub(super) fn pending(&self) -> Option<PendingAppend> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_pending(&self, pending: Option<PendingAppend>) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = pending;
    }

    /// Waits until the pending event (if any) is settled, so that what the
    /// store holds is the room's newest state. The caller holds `lock`, so
    /// nothing new is queued meanwhile; earlier pending events were queued
    /// before the last one and are settled with it.
    pub(super) async fn drain(&self) {
        if let Some(pending) = self.pending() {
            let mut settled = pending.settled.clone();
            let _ = settled.wait_for(|done| *done).await;
            self.settle(&pending.event_id);
        }
    }

    /// Forgets `event_id` if it is still the pending one (it was committed,
    /// or failed).
    pub(super) fn settle(&self, event_id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.as_ref().is_some_and(|p| p.event_id == event_id) {
            *pending = None;
        }
    }

    /// Takes the lock and waits for the pending event.
    pub(super) async fn exclusive(self: Arc<Self>) -> ExclusiveRoom {
        let guard = Arc::clone(&self.lock).lock_owned().await;
        self.drain().await;
        ExclusiveRoom { _guard: guard, _room: self }
    }
}
