//! The notifier: wake-ups of long-polling syncs, keyed by what each one
//! waits for. Shared by the components that change what syncs deliver
//! (the room writer through the store's commit listener, account data,
//! push rules, ephemeral data) and the sync component, which waits on it.
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chancery_store::{AfterCaller, EventListener};
use tokio::sync::Notify;

type Waiters = HashMap<u64, Arc<Notify>>;

/// Syncs an event wakes before its sender is answered, at most; beyond
/// that, all of them are woken after.
const WOKEN_BEFORE_SENDER: usize = 8;

#[derive(Default)]
struct Registry {
    by_room: HashMap<String, Waiters>,
    by_user: HashMap<String, Waiters>,
    all: Waiters,
}

#[derive(Default)]
pub struct Notifier {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    /// Syncs parked in [`Interest::changed`] right now.
    parked: AtomicUsize,
}

impl Notifier {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the store calls at each commit of an event (see
    /// `Store::set_event_listener`): the syncs the event concerns are woken.
    pub fn listener(self: &Arc<Self>) -> EventListener {
        let notifier = Arc::clone(self);
        Arc::new(move |room_id: &str, member_target: Option<&str>| notifier.event(room_id, member_target))
    }

    /// Something in the room changed: its events, receipts or typing.
    pub(crate) fn room(&self, room_id: &str) {
        if let Some(waiters) = self.registry().by_room.get(room_id) {
            waiters.values().for_each(|n| n.notify_one());
        }
    }

    /// An event was committed: its room's waiters, and for a membership
    /// event its target's (who may not be waiting on the room yet).
    ///
    /// Called before the sender is answered (see `Store::set_event_listener`).
    /// A few waiters (a direct chat, a small room) are woken at once, so the
    /// message reaches them while the sender's answer is on its way; more
    /// are woken by what this returns, run once the sender is woken, so
    /// the sender does not wait behind a big room's sync passes. Waiters
    /// that register after this point look for changes after the commit,
    /// so none misses the event.
    #[must_use = "the waiters it leaves for after the sender are woken only by running what it returns"]
    pub(crate) fn event(&self, room_id: &str, member_target: Option<&str>) -> Option<AfterCaller> {
        let r = self.registry();
        let room = r.by_room.get(room_id);
        let user = member_target.and_then(|u| r.by_user.get(u));
        let count = room.map_or(0, HashMap::len) + user.map_or(0, HashMap::len);
        let waiters = room.into_iter().chain(user).flat_map(HashMap::values);
        if count <= WOKEN_BEFORE_SENDER {
            waiters.for_each(|n| n.notify_one());
            return None;
        }
        let waiters: Vec<Arc<Notify>> = waiters.cloned().collect();
        Some(Box::new(move || waiters.iter().for_each(|n| n.notify_one())))
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
    /// registered until the returned interest is dropped. None when the
    /// user already has `max_per_user` syncs registered.
    pub(crate) fn register(self: &Arc<Self>, user_id: &str, rooms: BTreeSet<String>, max_per_user: usize) -> Option<Interest> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        {
            let mut r = self.registry();
            if r.by_user.get(user_id).is_some_and(|w| w.len() >= max_per_user) {
                return None;
            }
            r.by_user.entry(user_id.to_owned()).or_default().insert(id, Arc::clone(&notify));
            r.all.insert(id, Arc::clone(&notify));
            for room in &rooms {
                r.by_room.entry(room.clone()).or_default().insert(id, Arc::clone(&notify));
            }
        }
        Some(Interest { notifier: Arc::clone(self), id, user_id: user_id.to_owned(), rooms, notify })
    }

    /// How many syncs are parked waiting for a change right now (not
    /// those registered but still reading): the
    /// `chancery_sync_long_polls_waiting` gauge.
    pub fn long_polls_waiting(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
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
    notifier: Arc<Notifier>,
    id: u64,
    user_id: String,
    rooms: BTreeSet<String>,
    notify: Arc<Notify>,
}

impl Interest {
    /// Follows the sync's rooms as they change (a join, a leave). A room
    /// added here may have had events since the pass that found it was
    /// cut, which woke nobody here: the next wait returns at once, so a
    /// pass looks again.
    pub(crate) fn set_rooms(&mut self, rooms: BTreeSet<String>) {
        if rooms == self.rooms {
            return;
        }
        let mut r = self.notifier.registry();
        for gone in self.rooms.difference(&rooms) {
            remove(&mut r.by_room, gone, self.id);
        }
        let mut added = false;
        for new in rooms.difference(&self.rooms) {
            r.by_room.entry(new.clone()).or_default().insert(self.id, Arc::clone(&self.notify));
            added = true;
        }
        drop(r);
        self.rooms = rooms;
        if added {
            self.notify.notify_one();
        }
    }

    /// [`Self::set_rooms`] from a borrowed set, copied only when it differs.
    pub(crate) fn follow_rooms(&mut self, rooms: &BTreeSet<String>) {
        if *rooms != self.rooms {
            self.set_rooms(rooms.clone());
        }
    }

    /// Returns once something this sync waits on changed (at once if it
    /// changed since the last call).
    /// Counted in [`Notifier::long_polls_waiting`] while it waits.
    pub(crate) async fn changed(&self) {
        let mut notified = std::pin::pin!(self.notify.notified());
        // A waiter of the `Notify` before it counts as parked, so a change
        // made once the gauge shows it wakes it (not a stored permit).
        notified.as_mut().enable();
        let _parked = Parked::new(&self.notifier.parked);
        notified.await;
    }
}

/// One count in [`Notifier::long_polls_waiting`], taken back when the wait
/// ends however it ends: woken, or dropped (a timeout, a remote change, a
/// client that went away).
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut r = self.notifier.registry();
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
    async fn an_event_wakes_a_few_syncs_at_once_and_many_after_its_sender() {
        let w = Arc::new(Notifier::default());
        let small: Vec<Interest> =
            (0..2).map(|n| w.register(&format!("@s{n}:x"), rooms(&["!small"]), usize::MAX).unwrap()).collect();
        let invitee = w.register("@new:x", rooms(&[]), usize::MAX).unwrap();
        assert!(w.event("!small", Some("@new:x")).is_none(), "three waiters are woken at once");
        for i in small.iter().chain([&invitee]) {
            assert!(woke(i).await);
        }

        let big: Vec<Interest> =
            (0..=WOKEN_BEFORE_SENDER).map(|n| w.register(&format!("@b{n}:x"), rooms(&["!big"]), usize::MAX).unwrap()).collect();
        let after = w.event("!big", None).expect("too many to wake before the sender");
        for i in &big {
            assert!(!woke(i).await, "not before the sender");
        }
        // Once the sender is woken, they all are.
        after();
        for i in &big {
            assert!(woke(i).await);
        }
    }

    #[tokio::test]
    async fn wakes_only_the_syncs_a_change_concerns() {
        let w = Arc::new(Notifier::default());
        let mut alice = w.register("@a:x", rooms(&["!r1", "!r2"]), usize::MAX).unwrap();
        let bob = w.register("@b:x", rooms(&["!r2"]), usize::MAX).unwrap();

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
        assert!(woke(&alice).await, "a room joined since the pass's cut is looked at again");
        w.room("!r1");
        assert!(!woke(&alice).await, "alice left !r1");
        w.room("!r3");
        assert!(woke(&alice).await);

        drop(alice);
        drop(bob);
        assert_eq!(w.keys(), (0, 0, 0), "dropped interests leave nothing behind");
    }

    #[test]
    fn a_sync_counts_as_waiting_only_while_it_is_parked() {
        use std::future::Future;
        use std::pin::pin;
        use std::task::{Context, Waker};

        let w = Arc::new(Notifier::default());
        let i = w.register("@a:x", rooms(&["!r"]), usize::MAX).unwrap();
        assert_eq!(w.long_polls_waiting(), 0, "registered, still reading");
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut wait = pin!(i.changed());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert_eq!(w.long_polls_waiting(), 1);
            w.room("!r");
            assert!(wait.as_mut().poll(&mut cx).is_ready());
            assert_eq!(w.long_polls_waiting(), 0, "woken");
        }
        {
            let mut wait = pin!(i.changed());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert_eq!(w.long_polls_waiting(), 1);
        }
        assert_eq!(w.long_polls_waiting(), 0, "given up (timeout, client gone)");
    }

    #[test]
    fn a_user_has_a_bounded_number_of_waiting_syncs() {
        let w = Arc::new(Notifier::default());
        let mine: Vec<Interest> = (0..3).map(|_| w.register("@a:x", rooms(&["!r"]), 3).unwrap()).collect();
        assert!(w.register("@a:x", rooms(&["!r"]), 3).is_none());
        let _other = w.register("@b:x", rooms(&["!r"]), 3).expect("another user is not limited by @a's syncs");
        drop(mine);
        assert!(w.register("@a:x", rooms(&["!r"]), 3).is_some(), "a dropped sync frees its place");
    }
}
