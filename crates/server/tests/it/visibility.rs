//! History visibility beyond the timeline: what `/context`'s state,
//! `/members`, `/timestamp_to_event`, receipts, reports and bundled
//! aggregations reveal to a reader must stop where the events they may
//! read stop. Events hidden from a reader are answered exactly as missing
//! ones are. Plain HTTP.

use std::collections::BTreeMap;

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{User, assert_error};

/// A room whose `m.room.history_visibility` is `joined`; anyone may join.
async fn joined_only_room(alice: &User) -> String {
    alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await
}

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

/// `/members`: under `joined`, a member who joined late may not list the
/// members `at` a point before they joined; a former member gets the
/// members when they left (spec: 403 only for who "weren't previously a
/// member"), never later ones. Under `shared`, the earlier members are
/// the late joiner's to see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_follow_history_visibility() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let dave = User::new(&base, "dave").await;
    let members = |page: &Value| -> BTreeMap<String, String> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e["content"]["membership"].as_str().unwrap().to_owned()))
            .collect()
    };
    let listed = |entries: &[(&User, &str)]| -> BTreeMap<String, String> {
        entries.iter().map(|(u, m)| (u.id.clone(), (*m).to_owned())).collect()
    };
    let token = |sync: Value| sync["next_batch"].as_str().unwrap().to_owned();

    let room = joined_only_room(&alice).await;
    join(&carol, &room).await;
    let before_bob = token(alice.sync("").await);
    join(&bob, &room).await;
    let bob_there = token(bob.sync("").await);
    let at = |token: &str| format!("/rooms/{room}/members?at={token}");
    assert_error(&bob.call(Method::GET, &at(&before_bob), None).await, 403, "M_FORBIDDEN");
    let all_three = listed(&[(&alice, "join"), (&bob, "join"), (&carol, "join")]);
    assert_eq!(members(&bob.ok(Method::GET, &at(&bob_there), None).await), all_three);
    assert_eq!(members(&bob.ok(Method::GET, &format!("/rooms/{room}/members"), None).await), all_three);
    // The members before bob are still alice's to see.
    assert_eq!(members(&alice.ok(Method::GET, &at(&before_bob), None).await), listed(&[(&alice, "join"), (&carol, "join")]));

    leave(&bob, &room).await;
    join(&dave, &room).await;
    let now = token(alice.sync("").await);
    let when_bob_left = listed(&[(&alice, "join"), (&bob, "leave"), (&carol, "join")]);
    assert_eq!(members(&bob.ok(Method::GET, &format!("/rooms/{room}/members"), None).await), when_bob_left);
    assert_eq!(members(&bob.ok(Method::GET, &at(&bob_there), None).await), all_three);
    assert_error(&bob.call(Method::GET, &at(&now), None).await, 403, "M_FORBIDDEN");
    assert_error(&bob.call(Method::GET, &at(&before_bob), None).await, 403, "M_FORBIDDEN");
    // Who never was a member gets nothing.
    let outsider = User::new(&base, "erin").await;
    assert_error(&outsider.call(Method::GET, &format!("/rooms/{room}/members"), None).await, 403, "M_FORBIDDEN");

    // Under `shared` the history before joining is readable, members too.
    let shared = alice.create_room(json!({"preset": "public_chat"})).await;
    let before_bob = token(alice.sync("").await);
    join(&bob, &shared).await;
    let page = bob.ok(Method::GET, &format!("/rooms/{shared}/members?at={before_bob}"), None).await;
    assert_eq!(members(&page), listed(&[(&alice, "join")]));
    server.stop().await.unwrap();
}
