//! Conformance cases for simplified sliding sync (`SlidingSyncStore`):
//! the room list's facts kept by the write path, and connections'
//! positions with their per-room records.

use serde_json::json;

use chancery_store::*;

use super::{member, message, room_with, state};

const OWNER: ConnectionOwner<'static> = ConnectionOwner { user_id: "@alice:x", device_id: "PHONE", conn_id: "room-list" };

fn sent(room_id: &str, record: &str) -> SentRoom {
    SentRoom { room_id: room_id.into(), record: record.into() }
}

async fn records_at(store: &DynStore, conn_key: u64, pos: u64) -> Vec<(String, String)> {
    let at = store.sliding_position(OWNER, conn_key, pos, true).await.unwrap();
    at.rooms.into_iter().map(|r| (r.room_id, r.record)).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(r, c)| ((*r).to_owned(), (*c).to_owned())).collect()
}

pub async fn room_list_carries_bumps_types_and_encryption(store: DynStore) {
    room_with(&store, "!space:x", &[("$s1", "m.room.create", json!({"type": "m.space"}))], &[("$s2", "@alice:x", "join")]).await;
    room_with(
        &store,
        "!chat:x",
        &[("$c1", "m.room.create", json!({})), ("$c2", "m.room.encryption", json!({"algorithm": "m.megolm.v1.aes-sha2"}))],
        &[("$c3", "@alice:x", "join")],
    )
    .await;
    room_with(&store, "!invite:x", &[("$i1", "m.room.create", json!({}))], &[("$i2", "@alice:x", "invite")]).await;
    let chat_message = store.append_event(message("!chat:x", "$c4", 4), &["$c3".into()]).await.unwrap();
    // A state event moves the room's events on, not its bump.
    let topic =
        store.append_event(state("!chat:x", "$c5", "m.room.topic", json!({"topic": "t"}), 5), &["$c4".into()]).await.unwrap();
    let list = store.room_list("@alice:x").await.unwrap();
    assert_eq!(list.iter().map(|e| e.room_id.as_str()).collect::<Vec<_>>(), ["!chat:x", "!invite:x", "!space:x"]);
    let [chat, invite, space] = [&list[0], &list[1], &list[2]];
    assert_eq!((chat.bump_pos, chat.last_pos), (chat_message, topic));
    assert!(chat.encrypted && !space.encrypted && !invite.encrypted);
    assert_eq!(space.room_type.as_deref(), Some("m.space"));
    assert_eq!(chat.room_type, None);
    assert_eq!(invite.membership, chancery_proto::ruma::events::room::member::MembershipState::Invite);
    assert_eq!(invite.membership_event_id, "$i2");
    let invite_event = store.event("$i2").await.unwrap().unwrap();
    assert_eq!(invite.membership_pos, invite_event.stream_pos);
    // The create event bumps a room that has had nothing else.
    let create = store.event("$s1").await.unwrap().unwrap();
    assert_eq!(space.bump_pos, create.stream_pos);
    assert_eq!(space.last_pos, store.event("$s2").await.unwrap().unwrap().stream_pos);
    // Another user's list is theirs alone.
    assert!(store.room_list("@bob:x").await.unwrap().is_empty());
    store.append_event(member("!space:x", "$s3", "@bob:x", "join", 3), &["$s2".into()]).await.unwrap();
    assert_eq!(store.room_list("@bob:x").await.unwrap().len(), 1);
}

pub async fn room_list_changes_are_the_rooms_that_moved_on(store: DynStore) {
    room_with(&store, "!a:x", &[("$a1", "m.room.create", json!({}))], &[("$a2", "@alice:x", "join")]).await;
    room_with(&store, "!b:x", &[("$b1", "m.room.create", json!({}))], &[("$b2", "@alice:x", "join")]).await;
    room_with(&store, "!c:x", &[("$c1", "m.room.create", json!({}))], &[("$c2", "@carol:x", "join")]).await;
    let at = store.event("$c2").await.unwrap().unwrap().stream_pos;
    // From the beginning: the whole list.
    assert_eq!(store.room_list_changes("@alice:x", 0, 100).await.unwrap().unwrap(), store.room_list("@alice:x").await.unwrap());
    assert_eq!(store.room_list_changes("@alice:x", at, 100).await.unwrap(), Some(Vec::new()));
    let sent = store.append_event(message("!a:x", "$a3", 3), &["$a2".into()]).await.unwrap();
    // A room of someone else moving on is not in alice's changes.
    store.append_event(message("!c:x", "$c3", 3), &["$c2".into()]).await.unwrap();
    let changes = store.room_list_changes("@alice:x", at, 100).await.unwrap().unwrap();
    assert_eq!(changes.iter().map(|e| (e.room_id.as_str(), e.last_pos)).collect::<Vec<_>>(), [("!a:x", sent)]);
    // Alice's own leave is a change of her list, with her new membership.
    let left = store.append_event(member("!b:x", "$b3", "@alice:x", "leave", 3), &["$b2".into()]).await.unwrap();
    let changes = store.room_list_changes("@alice:x", sent, 100).await.unwrap().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].room_id.as_str(), changes[0].membership_pos), ("!b:x", left));
    assert_eq!(changes[0].membership, chancery_proto::ruma::events::room::member::MembershipState::Leave);
    assert!(!changes[0].kicked, "she left herself");
    // Carol's room: alice joins, carol kicks her.
    store.append_event(member("!c:x", "$c4", "@alice:x", "join", 4), &["$c3".into()]).await.unwrap();
    let mut kick = member("!c:x", "$c5", "@alice:x", "leave", 5);
    kick.sender = "@carol:x".into();
    store.append_event(kick, &["$c4".into()]).await.unwrap();
    let list = store.room_list("@alice:x").await.unwrap();
    let kicked: Vec<(&str, bool)> = list.iter().map(|e| (e.room_id.as_str(), e.kicked)).collect();
    assert_eq!(kicked, [("!a:x", false), ("!b:x", false), ("!c:x", true)]);
    assert_eq!(store.room_list_changes("@alice:x", left, 100).await.unwrap().unwrap(), list[2..]);
    // More rooms moved on than asked for: the caller reads the whole list.
    assert_eq!(store.room_list_changes("@alice:x", at, 2).await.unwrap(), None);
    assert!(store.room_list_changes("@alice:x", at, 3).await.unwrap().is_some());
}

pub async fn sliding_positions_keep_what_the_client_may_still_send(store: DynStore) {
    let key = store.start_sliding_connection(OWNER, 1_000, 10).await.unwrap();
    let p1 = store.record_sliding_answer(key, 0, "t1", &[sent("!a:x", "a1"), sent("!b:x", "b1")], 1_001).await.unwrap();
    assert_eq!(store.sliding_position(OWNER, key, p1, false).await.unwrap().token, "t1");
    assert_eq!(records_at(&store, key, p1).await, pairs(&[("!a:x", "a1"), ("!b:x", "b1")]));
    let p2 = store.record_sliding_answer(key, p1, "t2", &[sent("!a:x", "a2")], 1_002).await.unwrap();
    assert!(p2 > p1);
    assert_eq!(records_at(&store, key, p2).await, pairs(&[("!a:x", "a2"), ("!b:x", "b1")]));
    // The client never got p2 and asks again from p1: p2 is forgotten,
    // p1's state is intact, the new answer builds on it.
    assert_eq!(records_at(&store, key, p1).await, pairs(&[("!a:x", "a1"), ("!b:x", "b1")]));
    let p3 = store.record_sliding_answer(key, p1, "t3", &[sent("!b:x", "b3"), sent("!c:x", "c3")], 1_003).await.unwrap();
    assert!(p3 > p2, "positions are never reused");
    assert!(matches!(store.sliding_position(OWNER, key, p2, false).await, Err(StoreError::UnknownPosition)));
    assert_eq!(records_at(&store, key, p3).await, pairs(&[("!a:x", "a1"), ("!b:x", "b3"), ("!c:x", "c3")]));
    // Moving on from p3 forgets p1.
    let p4 = store.record_sliding_answer(key, p3, "t4", &[], 1_004).await.unwrap();
    assert!(matches!(store.sliding_position(OWNER, key, p1, false).await, Err(StoreError::UnknownPosition)));
    assert_eq!(records_at(&store, key, p4).await, pairs(&[("!a:x", "a1"), ("!b:x", "b3"), ("!c:x", "c3")]));
    // An answer on a position the connection no longer has is refused.
    let stale = store.record_sliding_answer(key, p2, "t5", &[], 1_005).await;
    assert!(matches!(stale, Err(StoreError::UnknownPosition)), "{stale:?}");

    // Only the owner's device and conn_id reach the position.
    for other in [
        ConnectionOwner { user_id: "@bob:x", ..OWNER },
        ConnectionOwner { device_id: "LAPTOP", ..OWNER },
        ConnectionOwner { conn_id: "other", ..OWNER },
    ] {
        assert!(matches!(store.sliding_position(other, key, p4, false).await, Err(StoreError::UnknownPosition)));
    }
    // Starting the connection afresh forgets the old one entirely.
    let fresh = store.start_sliding_connection(OWNER, 2_000, 10).await.unwrap();
    assert_ne!(fresh, key);
    assert!(matches!(store.sliding_position(OWNER, key, p4, false).await, Err(StoreError::UnknownPosition)));
    assert!(matches!(store.record_sliding_answer(key, p4, "t", &[], 2_001).await, Err(StoreError::UnknownPosition)));
    let f1 = store.record_sliding_answer(fresh, 0, "f1", &[], 2_002).await.unwrap();
    assert!(records_at(&store, fresh, f1).await.is_empty());
}

pub async fn sliding_connections_are_bounded_per_device_and_expire(store: DynStore) {
    let mut keys = Vec::new();
    for (n, conn_id) in ["c0", "c1", "c2"].iter().enumerate() {
        let owner = ConnectionOwner { conn_id, ..OWNER };
        let key = store.start_sliding_connection(owner, 1_000 + n as u64, 2).await.unwrap();
        let pos = store.record_sliding_answer(key, 0, "t", &[sent("!a:x", "r")], 1_000 + n as u64).await.unwrap();
        keys.push((owner, key, pos));
    }
    // The least recently used of three went when the third started.
    let (c0, k0, p0) = keys[0];
    assert!(matches!(store.sliding_position(c0, k0, p0, false).await, Err(StoreError::UnknownPosition)));
    for &(owner, key, pos) in &keys[1..] {
        store.sliding_position(owner, key, pos, true).await.unwrap();
    }
    // Another device has its own allowance.
    let laptop = ConnectionOwner { device_id: "LAPTOP", ..OWNER };
    let lk = store.start_sliding_connection(laptop, 5_000, 2).await.unwrap();
    let lp = store.record_sliding_answer(lk, 0, "t", &[], 5_000).await.unwrap();
    // Connections unused since before 4,000 expire; the laptop's stays.
    assert_eq!(store.expire_sliding_connections(4_000, 100).await.unwrap(), 2);
    for &(owner, key, pos) in &keys[1..] {
        assert!(matches!(store.sliding_position(owner, key, pos, false).await, Err(StoreError::UnknownPosition)));
    }
    store.sliding_position(laptop, lk, lp, false).await.unwrap();
    assert_eq!(store.expire_sliding_connections(4_000, 100).await.unwrap(), 0);
}
