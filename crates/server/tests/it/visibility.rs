//! History visibility beyond the timeline: what `/context`'s state,
//! `/members`, `/timestamp_to_event`, receipts, reports and bundled
//! aggregations reveal to a reader must stop where the events they may
//! read stop. Events hidden from a reader are answered exactly as missing
//! ones are. Plain HTTP.

use std::collections::BTreeMap;

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::User;

async fn join(user: &User, room: &str) {
    user.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
}

async fn leave(user: &User, room: &str) {
    user.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
}

/// `/context` of an event a former member may read: its state is the state
/// at the last event they may see (their leave), not at the end of the
/// events read, which would show who joined and what changed after they
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_state_stops_at_what_the_reader_may_see() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    // public_chat: history visibility `shared`.
    let room = alice.create_room(json!({"preset": "public_chat", "topic": "before"})).await;
    join(&bob, &room).await;
    let seen = alice.say(&room, "m1", "while bob is there").await;
    leave(&bob, &room).await;
    alice.ok(Method::PUT, &format!("/rooms/{room}/state/m.room.topic/"), Some(json!({"topic": "after bob left"}))).await;
    join(&carol, &room).await;

    let state_of = |context: &Value| -> BTreeMap<String, Value> {
        context["state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (format!("{} {}", e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()), e["content"].clone()))
            .collect()
    };
    let path = format!("/rooms/{room}/context/{seen}?limit=10");
    let for_bob = bob.ok(Method::GET, &path, None).await;
    let after: Vec<&str> = for_bob["events_after"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(after, ["m.room.member"], "only his own leave: {for_bob}");
    let state = state_of(&for_bob);
    assert!(!state.contains_key(&format!("m.room.member {}", carol.id)), "carol joined after bob left: {for_bob}");
    assert_eq!(state["m.room.topic "]["topic"], "before", "{for_bob}");
    assert_eq!(state[&format!("m.room.member {}", bob.id)]["membership"], "leave", "the state at his leave: {for_bob}");

    // A member reads the state at the last event returned, as before.
    let state = state_of(&alice.ok(Method::GET, &path, None).await);
    assert_eq!(state[&format!("m.room.member {}", carol.id)]["membership"], "join");
    assert_eq!(state["m.room.topic "]["topic"], "after bob left");
    server.stop().await.unwrap();
}
