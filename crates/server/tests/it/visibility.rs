//! History visibility beyond the timeline: what `/context`'s state,
//! `/members`, `/timestamp_to_event`, receipts, reports and bundled
//! aggregations reveal to a reader must stop where the events they may
//! read stop. Events hidden from a reader are answered exactly as missing
//! ones are. Plain HTTP.

use std::collections::BTreeMap;

use chancery_testkit::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{User, assert_error, call};

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

/// `GET /_matrix/client/v1{path}`.
async fn call_v1(user: &User, path: &str) -> (StatusCode, Value) {
    call(Method::GET, &format!("{}/_matrix/client/v1{path}", user.base), Some(&user.token), None).await
}

/// A well-formed event id that names no event.
const NO_EVENT: &str = "$nosucheventnosucheventnosucheventnosuchevent";

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

/// `/timestamp_to_event` passes over the events a member may not see as
/// if they did not exist: under `joined`, a late joiner looking for the
/// event nearest a message sent before they joined finds the nearest one
/// they may read (as `/messages` shows them), in both directions.
async fn timestamp_to_event_passes_over_hidden_events(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = joined_only_room(&alice).await;
    let secret = alice.say(&room, "s1", "before bob").await;
    join(&bob, &room).await;
    alice.say(&room, "s2", "after bob joined").await;
    let near = |dir: &str, ts: u64| format!("/rooms/{room}/timestamp_to_event?dir={dir}&ts={ts}");
    let secret_ts =
        alice.ok(Method::GET, &format!("/rooms/{room}/event/{secret}"), None).await["origin_server_ts"].as_u64().unwrap();
    for dir in ["f", "b"] {
        let (status, found) = call_v1(&alice, &near(dir, secret_ts)).await;
        assert_eq!((status, &found["event_id"]), (StatusCode::OK, &json!(secret)), "{dir}");
    }

    // What bob may read, oldest first (the server's clock does not go
    // back, so positions and timestamps agree in order): the room's first
    // events (`shared` until the visibility is set), then from his join.
    let readable = bob.ok(Method::GET, &format!("/rooms/{room}/messages?dir=f&limit=50"), None).await;
    let readable: Vec<(String, u64)> = readable["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap().to_owned(), e["origin_server_ts"].as_u64().unwrap()))
        .collect();
    assert!(!readable.iter().any(|(id, _)| *id == secret), "{readable:?}");
    let first_after = readable.iter().find(|(_, ts)| *ts >= secret_ts).unwrap();
    let last_before = readable.iter().rev().find(|(_, ts)| *ts <= secret_ts).unwrap();
    let (status, forward) = call_v1(&bob, &near("f", secret_ts)).await;
    assert_eq!((status, &forward["event_id"]), (StatusCode::OK, &json!(first_after.0)), "{forward}");
    let (status, backward) = call_v1(&bob, &near("b", secret_ts)).await;
    assert_eq!((status, &backward["event_id"]), (StatusCode::OK, &json!(last_before.0)), "{backward}");
    // Past the last event, nothing: the same answer for both.
    let far_future = 4_102_444_800_000;
    let nothing = call_v1(&alice, &near("f", far_future)).await;
    assert_error(&nothing, 404, "M_NOT_FOUND");
    assert_eq!(call_v1(&bob, &near("f", far_future)).await, nothing);
    server.stop().await.unwrap();
}

on_both_backends!(timestamp_to_event_passes_over_hidden_events);

/// Receipts, read markers and reports name events: one the user may not
/// see is answered exactly as one that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_reports_answer_hidden_events_as_missing() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = joined_only_room(&alice).await;
    let secret = alice.say(&room, "s1", "before bob").await;
    join(&bob, &room).await;
    let seen = alice.say(&room, "s2", "after bob joined").await;

    let receipt = |event: &str| format!("/rooms/{room}/receipt/m.read/{event}");
    let missing = bob.call(Method::POST, &receipt(NO_EVENT), Some(json!({}))).await;
    assert_error(&missing, 404, "M_NOT_FOUND");
    assert_eq!(bob.call(Method::POST, &receipt(&secret), Some(json!({}))).await, missing);
    let fully_read = format!("/rooms/{room}/receipt/m.fully_read/{secret}");
    assert_eq!(bob.call(Method::POST, &fully_read, Some(json!({}))).await, missing);
    let markers = |event: &str| json!({"m.fully_read": seen, "m.read": event});
    let markers_missing = bob.call(Method::POST, &format!("/rooms/{room}/read_markers"), Some(markers(NO_EVENT))).await;
    assert_error(&markers_missing, 404, "M_NOT_FOUND");
    assert_eq!(bob.call(Method::POST, &format!("/rooms/{room}/read_markers"), Some(markers(&secret))).await, markers_missing);
    let threaded = |root: &str| json!({"thread_id": root});
    let no_root = bob.call(Method::POST, &receipt(&seen), Some(threaded(NO_EVENT))).await;
    assert_error(&no_root, 400, "M_INVALID_PARAM");
    assert_eq!(bob.call(Method::POST, &receipt(&seen), Some(threaded(&secret))).await, no_root);
    bob.ok(Method::POST, &receipt(&seen), Some(json!({}))).await;

    let report = |event: &str| format!("/rooms/{room}/report/{event}");
    let missing = bob.call(Method::POST, &report(NO_EVENT), Some(json!({"reason": "spam"}))).await;
    assert_error(&missing, 404, "M_NOT_FOUND");
    assert_eq!(bob.call(Method::POST, &report(&secret), Some(json!({"reason": "spam"}))).await, missing);
    bob.ok(Method::POST, &report(&seen), Some(json!({"reason": "spam"}))).await;
    alice.ok(Method::POST, &report(&secret), Some(json!({"reason": "spam"}))).await;
    server.stop().await.unwrap();
}

/// Bundled aggregations follow history visibility as the events do: a
/// member of a `joined` room who was away for a while sees a thread count
/// of the replies they may read, only the references they may read, and
/// no `redacted_because` for a redaction made while they were away (the
/// content stays stripped).
async fn bundled_aggregations_follow_history_visibility(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = joined_only_room(&alice).await;
    join(&bob, &room).await;
    let root = alice.say(&room, "root", "budget draft").await;
    let in_thread =
        |body: &str| json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    let referring =
        |body: &str| json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.reference", "event_id": root}});
    alice.send(&room, "r1", in_thread("reply while bob is there")).await;
    let ref1 = alice.send(&room, "ref1", referring("see also 1")).await;
    let doomed = alice.say(&room, "doomed", "to be redacted while bob is away").await;
    leave(&bob, &room).await;
    alice.send(&room, "r2", in_thread("reply while bob is away")).await;
    let ref2 = alice.send(&room, "ref2", referring("see also 2")).await;
    let redaction =
        alice.ok(Method::PUT, &format!("/rooms/{room}/redact/{doomed}/x1"), Some(json!({}))).await["event_id"].clone();
    join(&bob, &room).await;
    let r3 = alice.send(&room, "r3", in_thread("reply after bob is back")).await;
    let ref3 = alice.send(&room, "ref3", referring("see also 3")).await;

    let relations = |event: &Value| event["unsigned"]["m.relations"].clone();
    let references = |relations: &Value| -> Vec<String> {
        relations["m.reference"]["chunk"].as_array().unwrap().iter().map(|c| c["event_id"].as_str().unwrap().to_owned()).collect()
    };
    let for_alice = relations(&alice.ok(Method::GET, &format!("/rooms/{room}/event/{root}"), None).await);
    assert_eq!(for_alice["m.thread"]["count"], 3, "{for_alice}");
    assert_eq!(references(&for_alice), [ref1.as_str(), &ref2, &ref3]);
    let for_bob = relations(&bob.ok(Method::GET, &format!("/rooms/{room}/event/{root}"), None).await);
    assert_eq!(for_bob["m.thread"]["latest_event"]["event_id"], json!(r3), "{for_bob}");
    assert_eq!(for_bob["m.thread"]["count"], 2, "the reply sent while bob was away is not counted: {for_bob}");
    assert_eq!(references(&for_bob), [ref1.as_str(), &ref3]);
    // The same in a page of /messages.
    let page = bob.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=50"), None).await;
    let root_in_page = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == json!(root)).unwrap();
    assert_eq!(relations(root_in_page)["m.thread"]["count"], 2, "{root_in_page}");
    assert_eq!(references(&relations(root_in_page)), [ref1.as_str(), &ref3]);

    let redacted_for_alice = alice.ok(Method::GET, &format!("/rooms/{room}/event/{doomed}"), None).await;
    assert_eq!(redacted_for_alice["unsigned"]["redacted_because"]["event_id"], redaction, "{redacted_for_alice}");
    let redacted_for_bob = bob.ok(Method::GET, &format!("/rooms/{room}/event/{doomed}"), None).await;
    assert_eq!(redacted_for_bob["content"], json!({}), "{redacted_for_bob}");
    assert!(redacted_for_bob["unsigned"].get("redacted_because").is_none(), "made while bob was away: {redacted_for_bob}");
    server.stop().await.unwrap();
}

on_both_backends!(bundled_aggregations_follow_history_visibility);
