//! Conformance cases of space hierarchies: a space's child links read by
//! type, and paused hierarchy walks.

use chancery_store::*;
use serde_json::json;

use crate::{event, room};

/// `m.space.child` events of `space`, each pointing at a child by state key.
fn child(space: &str, id: &str, child_room: &str, depth: u64) -> NewEvent {
    let mut e = event(space, id, "m.space.child", Some(child_room), depth);
    e.json = json!({"event_id": id, "room_id": space, "type": "m.space.child", "state_key": child_room,
                    "sender": "@alice:x", "depth": depth, "content": {"via": ["x"]}})
    .to_string();
    e
}

pub async fn current_state_of_one_type_is_read_in_state_key_order(store: DynStore) {
    let s = "!space:x";
    let events = vec![
        event(s, "$create", "m.room.create", Some(""), 1),
        child(s, "$c-b", "!b:x", 2),
        child(s, "$c-a", "!a:x", 3),
        event(s, "$topic", "m.room.topic", Some(""), 4),
        child(s, "$c-c", "!c:x", 5),
    ];
    store.create_room(room(s), events).await.unwrap();
    let keys = |events: Vec<StoredEvent>| events.into_iter().map(|e| e.state_key.unwrap_or_default()).collect::<Vec<_>>();
    assert_eq!(keys(store.current_state_of_type(s, "m.space.child", 10).await.unwrap()), ["!a:x", "!b:x", "!c:x"]);
    assert_eq!(keys(store.current_state_of_type(s, "m.space.child", 2).await.unwrap()), ["!a:x", "!b:x"]);
    // A replaced link is read as it is now; other types are not read.
    let mut again = child(s, "$c-a2", "!a:x", 6);
    again.json = again.json.replace(r#"{"via":["x"]}"#, "{}");
    store.append_event(again, &["$c-c".to_owned()]).await.unwrap();
    let now = store.current_state_of_type(s, "m.space.child", 10).await.unwrap();
    assert_eq!(now.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), ["$c-a2", "$c-b", "$c-c"]);
    assert_eq!(keys(store.current_state_of_type(s, "m.room.topic", 10).await.unwrap()), [""]);
    assert!(store.current_state_of_type(s, "m.room.name", 10).await.unwrap().is_empty());
    assert!(store.current_state_of_type("!nope:x", "m.space.child", 10).await.unwrap().is_empty());
}

fn walk(token: &str, user: &str, created_ts: u64) -> HierarchyWalk {
    HierarchyWalk {
        token: token.into(),
        user_id: user.into(),
        room_id: "!space:x".into(),
        suggested_only: true,
        max_depth: 3,
        pending: vec![
            PendingRoom { room_id: "!b:x".into(), depth: 1, via: vec!["y".into()] },
            PendingRoom { room_id: "!a:x".into(), depth: 2, via: Vec::new() },
        ],
        visited: vec!["!space:x".into(), "!c:x".into()],
        created_ts,
    }
}

pub async fn hierarchy_walks_expire_and_are_bounded_per_user(store: DynStore) {
    let saved = walk("t1", "@alice:x", 1_000);
    store.save_hierarchy_walk(&saved, 0, 3).await.unwrap();
    // Read back whole, and again (a retried page).
    assert_eq!(store.hierarchy_walk("t1", 0).await.unwrap(), Some(saved.clone()));
    assert_eq!(store.hierarchy_walk("t1", 1_000).await.unwrap(), Some(saved));
    assert_eq!(store.hierarchy_walk("nope", 0).await.unwrap(), None);
    // Too old for the caller: not handed out.
    assert_eq!(store.hierarchy_walk("t1", 1_001).await.unwrap(), None);

    // A user keeps at most three: the oldest go first; others keep theirs.
    store.save_hierarchy_walk(&walk("b1", "@bob:x", 1_000), 0, 3).await.unwrap();
    for (n, ts) in [(2, 1_001), (3, 1_002), (4, 1_003)] {
        store.save_hierarchy_walk(&walk(&format!("t{n}"), "@alice:x", ts), 0, 3).await.unwrap();
    }
    let live = |tokens: &'static [&'static str]| {
        let store = store.clone();
        async move {
            let mut found = Vec::new();
            for t in tokens {
                if store.hierarchy_walk(t, 0).await.unwrap().is_some() {
                    found.push(*t);
                }
            }
            found
        }
    };
    assert_eq!(live(&["t1", "t2", "t3", "t4", "b1"]).await, ["t2", "t3", "t4", "b1"]);

    // Saving deletes every expired walk, whoever's.
    store.save_hierarchy_walk(&walk("t5", "@alice:x", 5_000), 1_002, 3).await.unwrap();
    assert_eq!(live(&["t1", "t2", "t3", "t4", "t5", "b1"]).await, ["t3", "t4", "t5"]);
    // A token is never saved twice.
    assert!(matches!(store.save_hierarchy_walk(&walk("t5", "@alice:x", 5_001), 0, 3).await, Err(StoreError::Contract(_))));
}
