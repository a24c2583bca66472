//! Wake-ups of long-polling syncs, keyed by what each one waits for.
//!
//! A waiting sync registers an [`Interest`]: its user and the rooms it is
//! in. A change wakes only the syncs it concerns: an event, a receipt or a
//! typing change wakes the room's waiters, account data and membership
//! changes wake the user's; presence (and anything a node cannot place)
//! wakes every waiter. So one message in a room of M members costs M
//! wake-ups, not one per sync waiting on the node.
//!
//! Each waiter has one [`Notify`], whose stored permit closes the race
//! between answering "nothing new" and starting to wait: a change that
//! lands in between leaves the permit, and the wait returns at once.
//! Other nodes' commits (PostgreSQL LISTEN/NOTIFY) carry no keys and wake
//! everyone through the store's `remote_changes` instead.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

type Waiters = HashMap<u64, Arc<Notify>>;

#[derive(Default)]
struct Registry {
    by_room: HashMap<String, Waiters>,
    by_user: HashMap<String, Waiters>,
    all: Waiters,
}

#[derive(Default)]
pub(crate) struct Wakeups {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
}

impl Wakeups {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something in the room changed: its events, receipts or typing.
    pub(crate) fn room(&self, room_id: &str) {
        if let Some(waiters) = self.registry().by_room.get(room_id) {
            waiters.values().for_each(|n| n.notify_one());
        }
    }

    /// An event was committed: its room's waiters, and for a membership
    /// event its target's (who may not be waiting on the room yet).
    pub(crate) fn event(&self, room_id: &str, member_target: Option<&str>) {
        self.room(room_id);
        if let Some(user_id) = member_target {
            self.user(user_id);
        }
    }

    /// Something of the user's changed: account data, push rules, or a
    /// membership (which may be in a room they are not waiting on yet).
    pub(crate) fn user(&self, user_id: &str) {
        if let Some(waiters) = self.registry().by_user.get(user_id) {
            waiters.values().for_each(|n| n.notify_one());
        }
    }

    /// A change anyone may see (presence) or one this node cannot place.
    pub(crate) fn everyone(&self) {
        self.registry().all.values().for_each(|n| n.notify_one());
    }

    /// Registers a sync of `user_id` waiting on `rooms`; it stays
    /// registered until the returned interest is dropped.
    pub(crate) fn register(self: &Arc<Self>, user_id: &str, rooms: BTreeSet<String>) -> Interest {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        {
            let mut r = self.registry();
            r.by_user.entry(user_id.to_owned()).or_default().insert(id, Arc::clone(&notify));
            r.all.insert(id, Arc::clone(&notify));
            for room in &rooms {
                r.by_room.entry(room.clone()).or_default().insert(id, Arc::clone(&notify));
            }
        }
        Interest { wakeups: Arc::clone(self), id, user_id: user_id.to_owned(), rooms, notify }
    }

    #[cfg(test)]
    fn keys(&self) -> (usize, usize, usize) {
        let r = self.registry();
        (r.by_room.len(), r.by_user.len(), r.all.len())
    }
}

fn remove(map: &mut HashMap<String, Waiters>, key: &str, id: u64) {
    if let Some(waiters) = map.get_mut(key) {
        waiters.remove(&id);
        if waiters.is_empty() {
            map.remove(key);
        }
    }
}

/// One waiting sync's registration.
pub(crate) struct Interest {
    wakeups: Arc<Wakeups>,
    id: u64,
    user_id: String,
    rooms: BTreeSet<String>,
    notify: Arc<Notify>,
}

impl Interest {
    /// Follows the sync's rooms as they change (a join, a leave).
    pub(crate) fn set_rooms(&mut self, rooms: BTreeSet<String>) {
        if rooms == self.rooms {
            return;
        }
        let mut r = self.wakeups.registry();
        for gone in self.rooms.difference(&rooms) {
            remove(&mut r.by_room, gone, self.id);
        }
        for new in rooms.difference(&self.rooms) {
            r.by_room.entry(new.clone()).or_default().insert(self.id, Arc::clone(&self.notify));
        }
        drop(r);
        self.rooms = rooms;
    }

    /// Returns once something this sync waits on changed (at once if it
    /// changed since the last call).
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut r = self.wakeups.registry();
        remove(&mut r.by_user, &self.user_id, self.id);
        for room in &self.rooms {
            remove(&mut r.by_room, room, self.id);
        }
        r.all.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rooms(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn woke(i: &Interest) -> bool {
        tokio::time::timeout(Duration::from_millis(20), i.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn wakes_only_the_syncs_a_change_concerns() {
        let w = Arc::new(Wakeups::default());
        let mut alice = w.register("@a:x", rooms(&["!r1", "!r2"]));
        let bob = w.register("@b:x", rooms(&["!r2"]));

        w.room("!r1");
        assert!(woke(&alice).await);
        assert!(!woke(&bob).await, "bob is not in !r1");

        w.room("!r2");
        assert!(woke(&alice).await && woke(&bob).await);

        w.user("@b:x");
        assert!(!woke(&alice).await);
        assert!(woke(&bob).await);

        // A change before the wait starts is not lost.
        w.everyone();
        assert!(woke(&alice).await && woke(&bob).await);

        alice.set_rooms(rooms(&["!r3"]));
        w.room("!r1");
        assert!(!woke(&alice).await, "alice left !r1");
        w.room("!r3");
        assert!(woke(&alice).await);

        drop(alice);
        drop(bob);
        assert_eq!(w.keys(), (0, 0, 0), "dropped interests leave nothing behind");
    }
}
