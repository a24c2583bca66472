//! Which member events each device already holds, so that `/sync` with
//! lazy-loaded members does not send them again (client-server API,
//! "Lazy-loading room members": with `include_redundant_members: false`,
//! the default, "the server MAY assume that clients will remember
//! membership events they have already been sent").
//!
//! Like Synapse's `lazy_loaded_members_cache`, this is memory only, per
//! node, and bounded: at most [`MAX_LAZY_MEMBER_DEVICES`] devices, each
//! with at most [`MAX_LAZY_MEMBER_ROOMS_PER_DEVICE`] rooms and
//! [`MAX_LAZY_MEMBERS_PER_DEVICE`] members in all
//! ([`MAX_LAZY_MEMBERS_PER_ROOM`] in one room), least recently used
//! dropped first. Forgetting only costs bandwidth: a member event not found
//! here is sent again, which the spec allows. Users and event ids are kept
//! as 64-bit keyed hashes (a per-process random SipHash key), so an entry
//! costs a few dozen bytes and nobody can aim collisions at it.
//!
//! One thing Synapse does not do: a member event counts as held only once
//! the device syncs from a token at or past the answer that carried it. A
//! client whose answer was lost retries with its old `since` and gets the
//! member events again instead of never.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use chancery_proto::limits::{
    MAX_LAZY_MEMBER_DEVICES, MAX_LAZY_MEMBER_ROOMS_PER_DEVICE, MAX_LAZY_MEMBERS_PER_DEVICE, MAX_LAZY_MEMBERS_PER_ROOM,
};
use hashlink::LruCache;

use crate::stream_token::StreamToken;

/// Answers whose tokens are remembered per device to tell whether the
/// device received them; entries from older answers count as received.
const RESPONSES_PER_DEVICE: usize = 16;

/// One member event sent to a device: which one, in which answer.
#[derive(Debug, Clone, Copy)]
struct Sent {
    event: u64,
    response: u64,
}

struct DeviceMembers {
    /// Room id → hashed user id → the member event last sent.
    rooms: LruCache<String, LruCache<u64, Sent>>,
    /// Entries over all rooms.
    entries: usize,
    /// (serial, `next_batch`) of recent answers that carried member
    /// events, oldest first.
    responses: VecDeque<(u64, StreamToken)>,
    next_serial: u64,
}

impl DeviceMembers {
    fn new() -> Self {
        Self { rooms: LruCache::new(MAX_LAZY_MEMBER_ROOMS_PER_DEVICE), entries: 0, responses: VecDeque::new(), next_serial: 0 }
    }

    /// Whether the device has synced from the answer `serial` (or a later
    /// one): its `since` is at or past that answer's token in every stream.
    fn received(&self, serial: u64, since: &StreamToken) -> bool {
        match self.responses.iter().find(|(s, _)| *s == serial) {
            Some((_, token)) => {
                token.events <= since.events
                    && token.account_data <= since.account_data
                    && token.receipts <= since.receipts
                    && token.typing <= since.typing
                    && token.presence <= since.presence
            }
            // Older than every remembered answer.
            None => true,
        }
    }

    fn response_serial(&mut self, token: StreamToken) -> u64 {
        if let Some((serial, last)) = self.responses.back()
            && *last == token
        {
            return *serial;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.responses.push_back((serial, token));
        if self.responses.len() > RESPONSES_PER_DEVICE {
            self.responses.pop_front();
        }
        serial
    }

    /// Drops entries of the least recently used rooms until the device is
    /// within its bound.
    fn shrink(&mut self) {
        while self.entries > MAX_LAZY_MEMBERS_PER_DEVICE {
            let Some((_, members)) = self.rooms.iter_mut().next() else { break };
            if members.remove_lru().is_some() {
                self.entries -= 1;
            }
            if members.is_empty() {
                self.rooms.remove_lru();
            }
        }
    }
}

pub(crate) struct LazyMembersCache {
    devices: Mutex<LruCache<(String, String), DeviceMembers>>,
    hasher: RandomState,
}

impl LazyMembersCache {
    pub(crate) fn new() -> Self {
        Self { devices: Mutex::new(LruCache::new(MAX_LAZY_MEMBER_DEVICES)), hasher: RandomState::new() }
    }

    fn hash(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    /// Forgets what the device was sent: it starts a new sync sequence (an
    /// initial or full-state sync) and may have forgotten everything.
    pub(crate) fn reset(&self, user_id: &str, device_id: &str) {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices.remove(&(user_id.to_owned(), device_id.to_owned()));
    }

    /// Whether the device holds this member event of the room, having
    /// synced from `since`.
    pub(crate) fn holds(
        &self,
        user_id: &str,
        device_id: &str,
        room_id: &str,
        since: &StreamToken,
    ) -> impl Fn(&str, &str) -> bool + use<> {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let device = devices.peek(&(user_id.to_owned(), device_id.to_owned()));
        // A copy of the room's received entries, so that the caller filters
        // without holding the lock.
        let held: Vec<(u64, u64)> = device
            .and_then(|d| {
                d.rooms.peek(room_id).map(|members| {
                    members
                        .iter()
                        .filter(|(_, sent)| d.received(sent.response, since))
                        .map(|(member, sent)| (*member, sent.event))
                        .collect()
                })
            })
            .unwrap_or_default();
        drop(devices);
        let hasher = self.hasher.clone();
        move |member: &str, event_id: &str| {
            let (member, event) = (hasher.hash_one(member), hasher.hash_one(event_id));
            held.iter().any(|&(m, e)| m == member && e == event)
        }
    }

    /// Records the member events (state key, event id) sent to the device
    /// in the room by the answer whose `next_batch` is `response`; later
    /// ones of the same member replace earlier ones.
    pub(crate) fn record<'a>(
        &self,
        user_id: &str,
        device_id: &str,
        room_id: &str,
        response: StreamToken,
        sent: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let sent: Vec<(u64, u64)> = sent.into_iter().map(|(member, event)| (self.hash(member), self.hash(event))).collect();
        if sent.is_empty() {
            return;
        }
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let key = (user_id.to_owned(), device_id.to_owned());
        if devices.get_mut(&key).is_none() {
            devices.insert(key.clone(), DeviceMembers::new());
        }
        let Some(device) = devices.get_mut(&key) else { return };
        let serial = device.response_serial(response);
        if device.rooms.get_mut(room_id).is_none() {
            // Dropping the least recently used room takes its entries along.
            if device.rooms.len() == MAX_LAZY_MEMBER_ROOMS_PER_DEVICE
                && let Some((_, dropped)) = device.rooms.remove_lru()
            {
                device.entries -= dropped.len();
            }
            device.rooms.insert(room_id.to_owned(), LruCache::new(MAX_LAZY_MEMBERS_PER_ROOM));
        }
        let Some(members) = device.rooms.get_mut(room_id) else { return };
        let mut added = 0usize;
        let mut dropped = 0usize;
        for (member, event) in sent {
            let replaced = members.contains_key(&member);
            if !replaced && members.len() == MAX_LAZY_MEMBERS_PER_ROOM && members.remove_lru().is_some() {
                dropped += 1;
            }
            members.insert(member, Sent { event, response: serial });
            if !replaced {
                added += 1;
            }
        }
        device.entries = device.entries + added - dropped;
        device.shrink();
    }

    #[cfg(test)]
    fn entries(&self, user_id: &str, device_id: &str) -> Option<(usize, usize)> {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices.peek(&(user_id.to_owned(), device_id.to_owned())).map(|d| {
            let counted: usize = d.rooms.iter().map(|(_, m)| m.len()).sum();
            assert_eq!(counted, d.entries, "entry count drifted");
            (d.rooms.len(), d.entries)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(events: u64) -> StreamToken {
        StreamToken { events, ..StreamToken::default() }
    }

    #[test]
    fn held_once_synced_past_the_answer_that_carried_it() {
        let cache = LazyMembersCache::new();
        cache.record("@a:x", "D", "!r:x", token(10), [("@bob:x", "$join")]);
        // The answer with token 10 carried it; a retry from 5 did not get it.
        assert!(!cache.holds("@a:x", "D", "!r:x", &token(5))("@bob:x", "$join"));
        let holds = cache.holds("@a:x", "D", "!r:x", &token(10));
        assert!(holds("@bob:x", "$join"));
        // Another event of the same member (a profile change), another
        // member, room, device or user: not held.
        assert!(!holds("@bob:x", "$rename"));
        assert!(!holds("@carol:x", "$join"));
        assert!(!cache.holds("@a:x", "D", "!other:x", &token(10))("@bob:x", "$join"));
        assert!(!cache.holds("@a:x", "E", "!r:x", &token(10))("@bob:x", "$join"));
        assert!(!cache.holds("@z:x", "D", "!r:x", &token(10))("@bob:x", "$join"));
        // An answer that lacks a stream position the client has is not
        // proven received either.
        let receipts_behind = StreamToken { events: 20, receipts: 3, ..StreamToken::default() };
        cache.record("@a:x", "D", "!r:x", receipts_behind, [("@carol:x", "$c")]);
        assert!(!cache.holds("@a:x", "D", "!r:x", &token(20))("@carol:x", "$c"));
        // The newer event replaces the older; a reset forgets everything.
        cache.record("@a:x", "D", "!r:x", token(30), [("@bob:x", "$rename")]);
        let holds = cache.holds("@a:x", "D", "!r:x", &StreamToken { events: 30, receipts: 3, ..StreamToken::default() });
        assert!(holds("@bob:x", "$rename") && !holds("@bob:x", "$join") && holds("@carol:x", "$c"));
        cache.reset("@a:x", "D");
        assert!(!cache.holds("@a:x", "D", "!r:x", &token(30))("@bob:x", "$rename"));
        assert_eq!(cache.entries("@a:x", "D"), None);
    }

    #[test]
    fn bounded_per_room_per_device_and_in_devices() {
        let cache = LazyMembersCache::new();
        let names: Vec<(String, String)> =
            (0..MAX_LAZY_MEMBERS_PER_ROOM + 10).map(|n| (format!("@u{n}:x"), format!("$e{n}"))).collect();
        cache.record("@a:x", "D", "!r:x", token(1), names.iter().map(|(u, e)| (u.as_str(), e.as_str())));
        assert_eq!(cache.entries("@a:x", "D"), Some((1, MAX_LAZY_MEMBERS_PER_ROOM)));
        let holds = cache.holds("@a:x", "D", "!r:x", &token(1));
        assert!(!holds("@u0:x", "$e0"), "the oldest entries went first");
        assert!(holds(&names.last().unwrap().0, &names.last().unwrap().1));

        // Many rooms: the device keeps at most its share, oldest rooms
        // dropped first.
        for room in 0..MAX_LAZY_MEMBER_ROOMS_PER_DEVICE + 5 {
            let room_id = format!("!r{room}:x");
            cache.record("@a:x", "D", &room_id, token(2), names.iter().take(20).map(|(u, e)| (u.as_str(), e.as_str())));
            let (rooms, entries) = cache.entries("@a:x", "D").unwrap();
            assert!(rooms <= MAX_LAZY_MEMBER_ROOMS_PER_DEVICE && entries <= MAX_LAZY_MEMBERS_PER_DEVICE, "{rooms} {entries}");
        }
        let last = format!("!r{}:x", MAX_LAZY_MEMBER_ROOMS_PER_DEVICE + 4);
        assert!(cache.holds("@a:x", "D", &last, &token(2))("@u0:x", "$e0"));
        assert!(!cache.holds("@a:x", "D", "!r0:x", &token(2))("@u0:x", "$e0"));

        // Many devices: the least recently used ones are forgotten.
        for device in 0..MAX_LAZY_MEMBER_DEVICES + 1 {
            cache.record("@b:x", &format!("D{device}"), "!r:x", token(1), [("@u:x", "$e")]);
        }
        assert_eq!(cache.devices.lock().unwrap().len(), MAX_LAZY_MEMBER_DEVICES);
        assert_eq!(cache.entries("@b:x", "D0"), None);
        assert_eq!(cache.entries("@b:x", &format!("D{MAX_LAZY_MEMBER_DEVICES}")), Some((1, 1)));
    }
}
