//! Typing notifications (client-server API "Typing Notifications"): kept in
//! memory on the node that received them, never stored. Losing them on a
//! restart costs at most a few seconds of "is typing" display.
//!
//! Each change of a room's typing set (someone starts, stops, or their
//! timeout passes) takes the next value of a per-node serial, which is the
//! `typing` part of sync tokens; a sync delivers `m.typing` for the rooms
//! whose last change is newer than the client's token.
//!
//! The serial follows the wall clock (`max(serial + 1, now_ms)`), so the
//! serials of a restarted node, or of another node behind the same load
//! balancer, continue above tokens handed out earlier instead of starting
//! again at 0. Tokens older than this node's start (`floor`) may hide
//! typing state this node never knew of: such a sync gets every room's
//! typing list once, which clears stale indicators in the client.
//!
//! Expiry needs no timer task: whoever reads the state first removes
//! expired typers (each removal is a change), and a waiting sync sleeps at
//! most until the next expiry in its rooms.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chancery_proto::limits::{MAX_TYPING_ROOMS, MAX_TYPING_TIMEOUT_MS};
use chancery_proto::ruma::{RoomId, UserId};
use tokio::time::Instant;

use super::Ephemeral;
use super::cluster::Update;
use crate::rooms::state::ensure_joined;
use crate::{AuthedUser, Error};

#[derive(Debug, Default)]
struct RoomTyping {
    /// Who types, until when.
    typers: BTreeMap<String, Instant>,
    /// Serial of the last change of `typers`.
    changed: u64,
}

/// The typing state of one node. Pure: time is passed in.
#[derive(Debug)]
pub(crate) struct TypingState {
    serial: u64,
    /// Changes at or below this serial may be unknown here (before this
    /// node started, or in rooms forgotten to stay within
    /// `MAX_TYPING_ROOMS`).
    floor: u64,
    rooms: HashMap<String, RoomTyping>,
    /// (expiry, room, user) of every typer, soonest first.
    expiries: BTreeSet<(Instant, String, String)>,
    max_rooms: usize,
}

/// What a sync needs to know about the typing state of its rooms.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TypingSnapshot {
    pub serial: u64,
    pub floor: u64,
    /// Per requested room that has typing state: (last change, typers).
    pub rooms: HashMap<String, (u64, Vec<String>)>,
    /// The soonest expiry in the requested rooms.
    pub next_expiry: Option<Instant>,
}

impl TypingState {
    pub(crate) fn new(start_serial: u64, max_rooms: usize) -> Self {
        Self { serial: start_serial, floor: start_serial, rooms: HashMap::new(), expiries: BTreeSet::new(), max_rooms }
    }

    fn bump(&mut self, wall_ms: u64) -> u64 {
        self.serial = (self.serial + 1).max(wall_ms);
        self.serial
    }

    /// Removes typers whose time is up. Returns the rooms that changed.
    fn expire(&mut self, now: Instant, wall_ms: u64) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        while let Some(first) = self.expiries.first()
            && first.0 <= now
        {
            let (_, room_id, user_id) = self.expiries.pop_first().expect("first exists");
            let serial = self.bump(wall_ms);
            if let Some(room) = self.rooms.get_mut(&room_id) {
                room.typers.remove(&user_id);
                room.changed = serial;
            }
            changed.insert(room_id);
        }
        changed
    }

    /// Starts (`until` is `Some`) or stops typing. Returns whether the
    /// room's typing set changed (a refresh of someone already typing
    /// only moves their expiry).
    pub(crate) fn set(&mut self, room_id: &str, user_id: &str, until: Option<Instant>, now: Instant, wall_ms: u64) -> bool {
        let mut changed = !self.expire(now, wall_ms).is_empty();
        let room = self.rooms.entry(room_id.to_owned()).or_default();
        let previous = match until {
            Some(until) => room.typers.insert(user_id.to_owned(), until),
            None => room.typers.remove(user_id),
        };
        if let Some(previous) = previous {
            self.expiries.remove(&(previous, room_id.to_owned(), user_id.to_owned()));
        }
        if let Some(until) = until {
            self.expiries.insert((until, room_id.to_owned(), user_id.to_owned()));
        }
        if previous.is_some() != until.is_some() {
            let serial = self.bump(wall_ms);
            self.rooms.get_mut(room_id).expect("entry made above").changed = serial;
            changed = true;
        }
        if self.rooms.len() > self.max_rooms {
            self.forget_quiet_rooms();
        }
        changed
    }

    /// Drops the rooms nobody types in, oldest change first, down to 90%
    /// of the bound (so this runs rarely), raising `floor` past them.
    fn forget_quiet_rooms(&mut self) {
        let target = self.max_rooms - self.max_rooms / 10;
        let mut quiet: Vec<(u64, String)> =
            self.rooms.iter().filter(|(_, r)| r.typers.is_empty()).map(|(id, r)| (r.changed, id.clone())).collect();
        quiet.sort_unstable();
        let excess = self.rooms.len().saturating_sub(target);
        for (changed, room_id) in quiet.into_iter().take(excess) {
            self.rooms.remove(&room_id);
            self.floor = self.floor.max(changed);
        }
    }

    /// The state of `room_ids`, after removing expired typers. Returns the
    /// rooms expiring changed (so their waiting syncs can be woken).
    pub(crate) fn snapshot<'a>(
        &mut self,
        room_ids: impl IntoIterator<Item = &'a str>,
        now: Instant,
        wall_ms: u64,
    ) -> (TypingSnapshot, BTreeSet<String>) {
        let expired = self.expire(now, wall_ms);
        let mut snapshot = TypingSnapshot { serial: self.serial, floor: self.floor, ..Default::default() };
        for room_id in room_ids {
            if let Some(room) = self.rooms.get(room_id) {
                snapshot.rooms.insert(room_id.to_owned(), (room.changed, room.typers.keys().cloned().collect()));
                let soonest = room.typers.values().min().copied();
                snapshot.next_expiry = match (snapshot.next_expiry, soonest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        (snapshot, expired)
    }
}

/// The node's typing state, shared by request handlers.
pub(crate) struct TypingRuntime {
    state: Mutex<TypingState>,
}

impl TypingRuntime {
    /// Starting at the wall clock, `now_ms`.
    pub(crate) fn new(now_ms: u64) -> Self {
        Self { state: Mutex::new(TypingState::new(now_ms, MAX_TYPING_ROOMS)) }
    }

    /// Records a typing change (here or from another node); true if it
    /// changed what syncs show.
    pub(crate) fn set(&self, room_id: &str, user_id: &str, until: Option<Instant>, now: Instant, now_ms: u64) -> bool {
        self.lock().set(room_id, user_id, until, now, now_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TypingState> {
        // The state stays consistent between statements, so a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ephemeral {
    /// `PUT /rooms/{roomId}/typing/{userId}`. `timeout_ms` is `None` to
    /// stop typing; longer timeouts are cut to `MAX_TYPING_TIMEOUT_MS`.
    pub async fn set_typing(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        target: &UserId,
        timeout_ms: Option<u64>,
    ) -> Result<(), Error> {
        if user.user_id != target {
            return Err(Error::Forbidden("you can only set your own typing state".into()));
        }
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let now = Instant::now();
        let until = timeout_ms.map(|ms| now + Duration::from_millis(ms.min(MAX_TYPING_TIMEOUT_MS)));
        let changed = self.typing.set(room_id.as_str(), user.user_id.as_str(), until, now, self.deps.clock.now_ms());
        // Other servers expire a typing user themselves: a refresh goes
        // too, a repeated stop does not.
        if changed || until.is_some() {
            self.deps.edus.typing(room_id, &user.user_id, until.is_some());
        }
        if changed {
            self.deps.notifier.room(room_id.as_str());
            self.publish(Update::Typing {
                room_id: room_id.to_string(),
                user_id: user.user_id.to_string(),
                timeout_ms: timeout_ms.map(|ms| ms.min(MAX_TYPING_TIMEOUT_MS)),
            });
        }
        Ok(())
    }

    /// The typing state of the given rooms, for a sync.
    pub(crate) fn typing_snapshot<'a>(&self, room_ids: impl IntoIterator<Item = &'a str>) -> TypingSnapshot {
        let (snapshot, expired) = self.typing.lock().snapshot(room_ids, Instant::now(), self.deps.clock.now_ms());
        // A timeout ran out unnoticed: the syncs waiting on those rooms,
        // and only those, look again.
        for room_id in &expired {
            self.deps.notifier.room(room_id);
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn changes_take_serials_and_refreshes_do_not() {
        let t0 = Instant::now();
        let mut s = TypingState::new(100, 10);
        assert!(s.set("!r", "@a", Some(at(t0, 1_000)), t0, 0));
        assert!(!s.set("!r", "@a", Some(at(t0, 2_000)), at(t0, 500), 0), "a refresh is no change");
        assert!(s.set("!r", "@b", Some(at(t0, 1_000)), at(t0, 500), 0));
        let (snap, expired) = s.snapshot(["!r", "!none"], at(t0, 600), 0);
        assert!(expired.is_empty());
        assert_eq!(snap.serial, 102);
        assert_eq!(snap.floor, 100);
        assert_eq!(snap.rooms["!r"], (102, vec!["@a".to_owned(), "@b".to_owned()]));
        assert!(!snap.rooms.contains_key("!none"));
        assert_eq!(snap.next_expiry, Some(at(t0, 1_000)));

        // @b's time is up: the reader that notices removes them, as a change.
        let (snap, expired) = s.snapshot(["!r"], at(t0, 1_000), 0);
        assert_eq!(expired, BTreeSet::from(["!r".to_owned()]), "only the room whose typer ran out");
        assert_eq!(snap.rooms["!r"], (103, vec!["@a".to_owned()]));
        assert_eq!(snap.next_expiry, Some(at(t0, 2_000)), "a's refresh moved their expiry");

        assert!(s.set("!r", "@a", None, at(t0, 1_100), 0));
        assert!(!s.set("!r", "@a", None, at(t0, 1_200), 0), "stopping twice is one change");
        let (snap, _) = s.snapshot(["!r"], at(t0, 1_300), 0);
        assert_eq!(snap.rooms["!r"], (104, vec![]));
        assert_eq!(snap.next_expiry, None);
        // The stale expiry entry of @a's first timeout is gone too.
        let (_, expired) = s.snapshot(["!r"], at(t0, 5_000), 0);
        assert!(expired.is_empty());
    }

    #[test]
    fn serial_follows_the_wall_clock() {
        let t0 = Instant::now();
        let mut s = TypingState::new(1_000, 10);
        s.set("!r", "@a", Some(at(t0, 10)), t0, 5_000);
        assert_eq!(s.snapshot(["!r"], t0, 5_000).0.serial, 5_000);
        s.set("!r", "@b", Some(at(t0, 10)), t0, 5_000);
        assert_eq!(s.snapshot(["!r"], t0, 5_000).0.serial, 5_001, "same millisecond: still increasing");
        s.set("!r", "@c", Some(at(t0, 10)), t0, 10);
        assert_eq!(s.snapshot(["!r"], t0, 10).0.serial, 5_002, "a clock going back never lowers the serial");
    }

    #[test]
    fn quiet_rooms_are_forgotten_past_the_bound() {
        let t0 = Instant::now();
        let mut s = TypingState::new(0, 10);
        for n in 0..10 {
            let room = format!("!r{n}");
            s.set(&room, "@a", Some(at(t0, 100)), t0, 0);
            s.set(&room, "@a", None, t0, 0);
        }
        s.set("!busy", "@a", Some(at(t0, 100)), t0, 0);
        // 11 rooms > 10: the oldest quiet ones go, down to 9.
        assert_eq!(s.rooms.len(), 9);
        assert!(s.rooms.contains_key("!busy") && s.rooms.contains_key("!r9") && !s.rooms.contains_key("!r0"));
        assert_eq!(s.floor, 4, "the last forgotten change was !r1 stopping, serial 4");
    }
}
