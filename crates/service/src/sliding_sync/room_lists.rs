//! Each user's room list, kept in memory between answers and brought up to
//! date with only what changed.
//!
//! A user in thousands of rooms would otherwise have every answer (every
//! new connection, every wake of a long-poll) read all their memberships.
//! A list read at stream position `at` (or later) plus the entries of the
//! rooms that moved on after `at` is the list now (every field of an entry
//! changes only with an event of its room: `room_list_changes`), so an
//! answer at a position the list already covers reads nothing, and one a
//! message later reads one room. Positions are the store's, shared by all
//! nodes, so a list cached on one node never misses another node's writes.
//!
//! Bounded: at most [`ROOM_LISTS_CACHED_ENTRIES`] entries over all users
//! (least recently used lists go first), a list is read whole again when
//! more than [`ROOM_LIST_CHANGES_MAX`] rooms of the server moved on since
//! it was read, and at least every [`ROOM_LIST_REREAD_MS`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chancery_proto::ruma::events::room::member::MembershipState;

use chancery_proto::limits::{ROOM_LIST_CHANGES_MAX, ROOM_LIST_REREAD_MS, ROOM_LISTS_CACHED_ENTRIES};
use chancery_store::{RoomListEntry, SlidingSyncStore, StoreResult};
use hashlink::LruCache;

/// A user's room list.
pub(super) type RoomList = Arc<UserRooms>;

#[derive(Default)]
pub(super) struct UserRooms {
    /// By room id.
    pub entries: Vec<Arc<RoomListEntry>>,
    /// The rooms they are joined to (some maybe only after the position
    /// asked for: a list may be newer).
    pub joined: BTreeSet<String>,
}

impl UserRooms {
    fn new(entries: Vec<Arc<RoomListEntry>>) -> RoomList {
        let joined = entries.iter().filter(|e| e.membership == MembershipState::Join).map(|e| e.room_id.clone()).collect();
        Arc::new(Self { entries, joined })
    }
}

struct Cached {
    /// The list holds every change up to this stream position.
    at: u64,
    /// When it was last read whole (ms).
    read_ms: u64,
    list: RoomList,
}

struct Lists {
    by_user: LruCache<String, Cached>,
    /// Entries of all the lists held.
    entries: usize,
}

pub(super) struct RoomLists {
    lists: Mutex<Lists>,
}

impl RoomLists {
    pub(super) fn new() -> Self {
        Self { lists: Mutex::new(Lists { by_user: LruCache::new_unbounded(), entries: 0 }) }
    }

    /// The user's list as of stream position `at` or later.
    pub(super) async fn at(&self, store: &dyn SlidingSyncStore, user_id: &str, at: u64, now_ms: u64) -> StoreResult<RoomList> {
        let cached = {
            let mut lists = self.lists.lock().expect("room lists");
            lists.by_user.get(user_id).map(|c| (c.at, c.read_ms, Arc::clone(&c.list)))
        };
        let (list, read_ms) = match cached {
            Some((cached_at, read_ms, list)) if cached_at >= at && now_ms.saturating_sub(read_ms) < ROOM_LIST_REREAD_MS => {
                return Ok(list);
            }
            Some((cached_at, read_ms, list)) if now_ms.saturating_sub(read_ms) < ROOM_LIST_REREAD_MS => {
                match store.room_list_changes(user_id, cached_at, ROOM_LIST_CHANGES_MAX).await? {
                    Some(changes) if changes.is_empty() => (list, read_ms),
                    Some(changes) => (UserRooms::new(merge(&list.entries, changes)), read_ms),
                    None => (whole(store, user_id).await?, now_ms),
                }
            }
            _ => (whole(store, user_id).await?, now_ms),
        };
        self.keep(user_id, at, read_ms, &list);
        Ok(list)
    }

    /// Keeps `list` as the user's, unless a newer one is held or it alone
    /// is over the bound.
    fn keep(&self, user_id: &str, at: u64, read_ms: u64, list: &RoomList) {
        let mut lists = self.lists.lock().expect("room lists");
        if list.entries.len() > ROOM_LISTS_CACHED_ENTRIES {
            return;
        }
        if let Some(held) = lists.by_user.get(user_id) {
            if held.at > at {
                return;
            }
            let held = held.list.entries.len();
            lists.entries -= held;
        }
        lists.by_user.insert(user_id.to_owned(), Cached { at, read_ms, list: Arc::clone(list) });
        lists.entries += list.entries.len();
        while lists.entries > ROOM_LISTS_CACHED_ENTRIES {
            let Some((_, oldest)) = lists.by_user.remove_lru() else { break };
            lists.entries -= oldest.list.entries.len();
        }
    }
}

async fn whole(store: &dyn SlidingSyncStore, user_id: &str) -> StoreResult<RoomList> {
    Ok(UserRooms::new(store.room_list(user_id).await?.into_iter().map(Arc::new).collect()))
}

/// `list` with `changes` in place of (or next to) its entries, both by
/// room id.
fn merge(list: &[Arc<RoomListEntry>], changes: Vec<RoomListEntry>) -> Vec<Arc<RoomListEntry>> {
    let mut out = Vec::with_capacity(list.len() + changes.len());
    let mut old = list.iter().peekable();
    for change in changes {
        while let Some(entry) = old.next_if(|e| e.room_id < change.room_id) {
            out.push(Arc::clone(entry));
        }
        old.next_if(|e| e.room_id == change.room_id);
        out.push(Arc::new(change));
    }
    out.extend(old.cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room_id: &str, last_pos: u64) -> RoomListEntry {
        RoomListEntry {
            room_id: room_id.into(),
            membership: MembershipState::Join,
            membership_event_id: format!("$m-{room_id}"),
            membership_pos: 1,
            bump_pos: last_pos,
            last_pos,
            room_type: None,
            encrypted: false,
            kicked: false,
        }
    }

    /// Rooms and their newest positions.
    type Rooms<'a> = &'a [(&'a str, u64)];

    fn rooms(list: &[Arc<RoomListEntry>]) -> Vec<(&str, u64)> {
        list.iter().map(|e| (e.room_id.as_str(), e.last_pos)).collect()
    }

    #[test]
    fn changes_replace_their_rooms_and_new_rooms_go_in_order() {
        let list: Vec<Arc<RoomListEntry>> = [entry("!b", 1), entry("!d", 1), entry("!f", 1)].into_iter().map(Arc::new).collect();
        let cases: [(Rooms, Rooms); 5] = [
            (&[], &[("!b", 1), ("!d", 1), ("!f", 1)]),
            (&[("!d", 5)], &[("!b", 1), ("!d", 5), ("!f", 1)]),
            (&[("!a", 5), ("!g", 6)], &[("!a", 5), ("!b", 1), ("!d", 1), ("!f", 1), ("!g", 6)]),
            (&[("!b", 7), ("!c", 7), ("!f", 8)], &[("!b", 7), ("!c", 7), ("!d", 1), ("!f", 8)]),
            (&[("!e", 2)], &[("!b", 1), ("!d", 1), ("!e", 2), ("!f", 1)]),
        ];
        for (changes, want) in cases {
            let changes = changes.iter().map(|(r, p)| entry(r, *p)).collect();
            assert_eq!(rooms(&merge(&list, changes)), want);
        }
    }
}
