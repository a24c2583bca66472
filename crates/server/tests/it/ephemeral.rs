//! Account data, tags, receipts, read markers, typing and ignored users,
//! over plain HTTP and through matrix-sdk, and their delivery by /sync
//! (initial, incremental, long-poll).

use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, assert_error, call, http, wait_for_parked_polls, with_metrics};

impl User {
    async fn sync_since(&self, since: Option<&str>) -> Value {
        match since {
            Some(since) => self.ok(Method::GET, &format!("/sync?since={since}&timeout=0"), None).await,
            None => self.ok(Method::GET, "/sync", None).await,
        }
    }
    /// Long-polls (each poll up to 10 s, all of it bounded by 30 s) until
    /// `found` picks something out of an answer; returns it and the token
    /// after that answer.
    async fn sync_until<T>(&self, since: &str, what: &str, mut found: impl FnMut(&Value) -> Option<T>) -> (T, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut since = since.to_owned();
        while Instant::now() < deadline {
            let body = self.ok(Method::GET, &format!("/sync?since={since}&timeout=10000"), None).await;
            since = body["next_batch"].as_str().unwrap().to_owned();
            if let Some(got) = found(&body) {
                return (got, since);
            }
        }
        panic!("{} never saw {what}", self.id);
    }
    fn account_data_path(&self, room: Option<&str>, event_type: &str) -> String {
        match room {
            Some(room) => format!("/user/{}/rooms/{room}/account_data/{event_type}", self.id),
            None => format!("/user/{}/account_data/{event_type}", self.id),
        }
    }
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().unwrap().to_owned()
}

/// Contents of the events of `kind` in a list of events.
fn contents(events: &Value, kind: &str) -> Vec<Value> {
    events.as_array().map(|a| a.iter().filter(|e| e["type"] == kind).map(|e| e["content"].clone()).collect()).unwrap_or_default()
}

fn global_account_data(sync: &Value, kind: &str) -> Vec<Value> {
    contents(&sync["account_data"]["events"], kind)
}

fn room_account_data(sync: &Value, room: &str, kind: &str) -> Vec<Value> {
    contents(&sync["rooms"]["join"][room]["account_data"]["events"], kind)
}

fn ephemeral(sync: &Value, room: &str, kind: &str) -> Vec<Value> {
    contents(&sync["rooms"]["join"][room]["ephemeral"]["events"], kind)
}

fn messages_from(events: &Value, sender: &str) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message" && e["sender"] == sender)
                .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn account_data_and_tags(backend: Backend) {
    let server = TestServer::start_with(backend, with_metrics).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = alice.create_room(json!({"name": "Cabinet"})).await;
    let other_room = alice.create_room(json!({})).await;

    // Set and get, global and per room; rooms and global are separate.
    let cfg = alice.account_data_path(None, "org.example.cfg");
    assert_error(&alice.call(Method::GET, &cfg, None).await, 404, "M_NOT_FOUND");
    alice.ok(Method::PUT, &cfg, Some(json!({"theme": "dark"}))).await;
    assert_eq!(alice.ok(Method::GET, &cfg, None).await, json!({"theme": "dark"}));
    let room_cfg = alice.account_data_path(Some(&room), "org.example.cfg");
    assert_error(&alice.call(Method::GET, &room_cfg, None).await, 404, "M_NOT_FOUND");
    alice.ok(Method::PUT, &room_cfg, Some(json!({"pinned": true}))).await;
    assert_eq!(alice.ok(Method::GET, &room_cfg, None).await, json!({"pinned": true}));
    assert_error(
        &alice.call(Method::GET, &alice.account_data_path(Some(&other_room), "org.example.cfg"), None).await,
        404,
        "M_NOT_FOUND",
    );
    let r0 = format!("{base}/_matrix/client/r0/user/{}/account_data/org.example.cfg", alice.id);
    assert_eq!(call(Method::GET, &r0, Some(&alice.token), None).await.1, json!({"theme": "dark"}));

    // Only for yourself.
    assert_error(&bob.call(Method::GET, &cfg, None).await, 403, "M_FORBIDDEN");
    assert_error(&bob.call(Method::PUT, &cfg, Some(json!({"theme": "light"}))).await, 403, "M_FORBIDDEN");
    assert_error(&bob.call(Method::PUT, &room_cfg, Some(json!({}))).await, 403, "M_FORBIDDEN");
    assert_error(&bob.call(Method::GET, &format!("/user/{}/rooms/{room}/tags", alice.id), None).await, 403, "M_FORBIDDEN");
    assert_eq!(alice.ok(Method::GET, &cfg, None).await, json!({"theme": "dark"}));

    // Bad input.
    assert_error(&alice.call(Method::PUT, &cfg, Some(json!(["not", "an", "object"]))).await, 400, "M_BAD_JSON");
    let not_json = http().put(alice.url(&cfg)).bearer_auth(&alice.token).body("{nope").send().await.unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(not_json.json::<Value>().await.unwrap()["errcode"], "M_NOT_JSON");
    for managed in ["m.fully_read", "m.push_rules"] {
        assert_error(&alice.call(Method::PUT, &alice.account_data_path(None, managed), Some(json!({}))).await, 405, "M_BAD_JSON");
        assert_error(
            &alice.call(Method::PUT, &alice.account_data_path(Some(&room), managed), Some(json!({}))).await,
            405,
            "M_BAD_JSON",
        );
    }
    let huge = json!({"blob": "x".repeat(200 * 1024)});
    assert_error(&alice.call(Method::PUT, &cfg, Some(huge)).await, 413, "M_TOO_LARGE");
    assert_error(
        &alice.call(Method::PUT, &alice.account_data_path(Some("not-a-room"), "org.example.cfg"), Some(json!({}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_eq!(alice.ok(Method::GET, &cfg, None).await, json!({"theme": "dark"}));

    // Initial sync: all of it, global at the top, room data in the room.
    let initial = alice.sync_since(None).await;
    assert_eq!(global_account_data(&initial, "org.example.cfg"), [json!({"theme": "dark"})]);
    assert_eq!(room_account_data(&initial, &room, "org.example.cfg"), [json!({"pinned": true})]);
    let since = next_batch(&initial);
    assert_eq!(since.split('_').count(), 8, "{since}");

    // Incremental: only what changed, and a room with nothing else new
    // still comes with its account data.
    alice.ok(Method::PUT, &cfg, Some(json!({"theme": "light"}))).await;
    alice.ok(Method::PUT, &alice.account_data_path(None, "m.direct"), Some(json!({bob.id.clone(): [room.clone()]}))).await;
    let (_, since) = alice
        .sync_until(&since, "the new theme", |s| {
            let cfg = global_account_data(s, "org.example.cfg");
            (!cfg.is_empty()).then(|| {
                assert_eq!(cfg, [json!({"theme": "light"})]);
                assert_eq!(global_account_data(s, "m.direct"), [json!({bob.id.clone(): [room.clone()]})]);
                assert!(s["rooms"]["join"].get(&room).is_none(), "nothing new in the room: {s}");
            })
        })
        .await;
    let quiet = alice.sync_since(Some(&since)).await;
    assert!(global_account_data(&quiet, "org.example.cfg").is_empty(), "{quiet}");

    // Tags.
    let tags = format!("/user/{}/rooms/{room}/tags", alice.id);
    assert_eq!(alice.ok(Method::GET, &tags, None).await, json!({"tags": {}}));
    alice.ok(Method::PUT, &format!("{tags}/u.work"), Some(json!({"order": 0.5}))).await;
    alice.ok(Method::PUT, &format!("{tags}/m.favourite"), Some(json!({}))).await;
    assert_eq!(alice.ok(Method::GET, &tags, None).await, json!({"tags": {"u.work": {"order": 0.5}, "m.favourite": {}}}));
    alice.ok(Method::DELETE, &format!("{tags}/u.work"), None).await;
    alice.ok(Method::DELETE, &format!("{tags}/u.never-set"), None).await;
    assert_eq!(alice.ok(Method::GET, &tags, None).await, json!({"tags": {"m.favourite": {}}}));
    assert_eq!(
        alice.ok(Method::GET, &alice.account_data_path(Some(&room), "m.tag"), None).await,
        json!({"tags": {"m.favourite": {}}})
    );
    assert_error(&alice.call(Method::PUT, &format!("{tags}/u.bad"), Some(json!({"order": "first"}))).await, 400, "M_BAD_JSON");
    assert_error(&alice.call(Method::PUT, &format!("{tags}/{}", "t".repeat(300)), Some(json!({}))).await, 400, "M_INVALID_PARAM");
    let (tag_events, since) = alice
        .sync_until(&since, "the tags", |s| {
            let tags = room_account_data(s, &room, "m.tag");
            (!tags.is_empty()).then_some(tags)
        })
        .await;
    assert_eq!(tag_events.last().unwrap(), &json!({"tags": {"m.favourite": {}}}));

    // A long-poll waiting when the account data changes is woken with it.
    let poll = {
        let (url, token) = (alice.url(&format!("/sync?since={since}&timeout=20000")), alice.token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (call(Method::GET, &url, Some(&token), None).await, started.elapsed())
        })
    };
    wait_for_parked_polls(&server, 1).await;
    alice.ok(Method::PUT, &cfg, Some(json!({"theme": "contrast"}))).await;
    let ((status, woke), elapsed) = poll.await.unwrap();
    assert_eq!(status, 200, "{woke}");
    assert_eq!(global_account_data(&woke, "org.example.cfg"), [json!({"theme": "contrast"})]);
    assert!(elapsed < Duration::from_secs(15), "the long-poll was not woken: answered after {elapsed:?}");

    // Old one-part tokens still work (the other streams count from 0);
    // malformed ones are refused.
    let events_part = since.split('_').next().unwrap().to_owned();
    let old = alice.sync_since(Some(&events_part)).await;
    assert_eq!(global_account_data(&old, "org.example.cfg"), [json!({"theme": "contrast"})]);
    assert_error(&alice.call(Method::GET, "/sync?since=s1_2_x&timeout=0", None).await, 400, "M_INVALID_PARAM");
    // And a sync token works as a /messages token.
    let page = alice.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=2&from={}", next_batch(&woke)), None).await;
    assert!(!page["chunk"].as_array().unwrap().is_empty(), "{page}");
    server.stop().await.unwrap();
}

on_both_backends!(account_data_and_tags);

async fn account_data_is_bounded_per_user(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    // Fill alice's account data with entries of the largest content
    // (128 KiB) until one is refused.
    let largest = json!({"blob": "y".repeat(128 * 1024 - 11)});
    assert_eq!(largest.to_string().len(), 128 * 1024);
    let mut refused = None;
    for n in 0..200 {
        let path = alice.account_data_path(None, &format!("org.example.fill{n:03}"));
        let got = alice.call(Method::PUT, &path, Some(largest.clone())).await;
        if got.0 != 200 {
            refused = Some((n, path, got));
            break;
        }
    }
    let (accepted, path, got) = refused.expect("the total is bounded");
    assert_error(&got, 403, "M_FORBIDDEN");
    // The bound is 16 MiB, not far below.
    assert!(accepted >= 120, "refused after {accepted}");
    assert_error(&alice.call(Method::GET, &path, None).await, 404, "M_NOT_FOUND");
    // Replacing an entry by one no larger still works.
    alice.ok(Method::PUT, &alice.account_data_path(None, "org.example.fill000"), Some(largest.clone())).await;
    alice.ok(Method::PUT, &alice.account_data_path(None, "org.example.fill001"), Some(json!({"small": true}))).await;
    server.stop().await.unwrap();
}

on_both_backends!(account_data_is_bounded_per_user);

async fn room_account_data_needs_a_membership(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    // Room account data and tags: only for rooms alice has a membership in
    // (invited, joined, left); removing a tag needs none.
    let room = bob.create_room(json!({})).await;
    let cfg = alice.account_data_path(Some(&room), "org.example.cfg");
    let tag = format!("/user/{}/rooms/{room}/tags/u.work", alice.id);
    assert_error(&alice.call(Method::PUT, &cfg, Some(json!({"n": 1}))).await, 403, "M_FORBIDDEN");
    assert_error(&alice.call(Method::PUT, &tag, Some(json!({}))).await, 403, "M_FORBIDDEN");
    assert_error(&alice.call(Method::GET, &cfg, None).await, 404, "M_NOT_FOUND");
    alice.ok(Method::DELETE, &tag, None).await;
    bob.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": alice.id}))).await;
    alice.ok(Method::PUT, &cfg, Some(json!({"n": 2}))).await;
    alice.ok(Method::PUT, &tag, Some(json!({}))).await;
    alice.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    alice.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    alice.ok(Method::PUT, &cfg, Some(json!({"n": 3}))).await;
    assert_eq!(alice.ok(Method::GET, &cfg, None).await, json!({"n": 3}));
    assert_eq!(
        alice.ok(Method::GET, &format!("/user/{}/rooms/{room}/tags", alice.id), None).await,
        json!({"tags": {"u.work": {}}})
    );
    server.stop().await.unwrap();
}

on_both_backends!(room_account_data_needs_a_membership);

/// The org.example.big* types of an answer's global account data.
fn big_types(sync: &Value) -> Vec<String> {
    let events = sync["account_data"]["events"].as_array().cloned().unwrap_or_default();
    events.iter().filter_map(|e| e["type"].as_str()).filter(|t| t.starts_with("org.example.big")).map(str::to_owned).collect()
}

async fn sync_answers_carry_bounded_account_data(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    // 25 entries of 100 KiB are more than one answer carries: the initial
    // sync gets the first ones, each sync after it the next ones at once,
    // every one exactly once.
    let blob = "x".repeat(100 * 1024);
    let all: Vec<String> = (0..25).map(|n| format!("org.example.big{n:02}")).collect();
    for event_type in &all {
        alice.ok(Method::PUT, &alice.account_data_path(None, event_type), Some(json!({"blob": blob}))).await;
    }
    let initial = alice.sync_since(None).await;
    let mut seen = big_types(&initial);
    assert!(!seen.is_empty() && seen.len() < all.len(), "{} in the initial sync", seen.len());
    let mut since = next_batch(&initial);
    for _ in 0..all.len() {
        if seen.len() >= all.len() {
            break;
        }
        let started = Instant::now();
        let next = alice.ok(Method::GET, &format!("/sync?since={since}&timeout=20000"), None).await;
        assert!(started.elapsed() < Duration::from_secs(10), "the rest waited for a change");
        seen.extend(big_types(&next));
        since = next_batch(&next);
    }
    assert_eq!(seen, all, "each once, in order");
    assert!(big_types(&alice.sync_since(Some(&since)).await).is_empty());

    // Cut short, an answer comes back at once even when its filter leaves
    // out all it carried (the token moves on through the account data).
    let filter = crate::common::urlencode(r#"{"account_data":{"types":["m.none"]}}"#);
    let initial = alice.ok(Method::GET, &format!("/sync?filter={filter}"), None).await;
    let started = Instant::now();
    let next = alice.ok(Method::GET, &format!("/sync?filter={filter}&since={}&timeout=20000", next_batch(&initial)), None).await;
    assert!(started.elapsed() < Duration::from_secs(10), "a filtered, cut-short answer waited");
    let account_data_part = |token: &str| token.split('_').nth(1).unwrap().parse::<u64>().unwrap();
    assert!(account_data_part(&next_batch(&next)) > account_data_part(&next_batch(&initial)));
    server.stop().await.unwrap();
}

on_both_backends!(sync_answers_carry_bounded_account_data);

/// `content[event][type][user]` of the `m.receipt` events of a room.
fn receipt_of(receipts: &[Value], event: &str, kind: &str, user: &str) -> Option<Value> {
    receipts.iter().find_map(|c| c.get(event).and_then(|e| e.get(kind)).and_then(|k| k.get(user)).cloned())
}

async fn receipts_and_read_markers(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let root = bob.say(&room, "m1", "thread root").await;
    let second = bob.say(&room, "m2", "second").await;
    let reply = bob
        .send(
            &room,
            "m3",
            json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    let elsewhere = alice.create_room(json!({})).await;
    let foreign = alice.say(&elsewhere, "f1", "elsewhere").await;

    let bob_since = next_batch(&bob.sync_since(None).await);
    let alice_since = next_batch(&alice.sync_since(None).await);

    // A public receipt reaches the other member.
    let receipt = |kind: &str, event: &str| format!("/rooms/{room}/receipt/{kind}/{event}");
    alice.ok(Method::POST, &receipt("m.read", &second), Some(json!({}))).await;
    let (got, bob_since) = bob
        .sync_until(&bob_since, "alice's receipt", |s| {
            receipt_of(&ephemeral(s, &room, "m.receipt"), &second, "m.read", &alice.id)
        })
        .await;
    assert!(got["ts"].as_u64().unwrap() > 0 && got.get("thread_id").is_none(), "{got}");

    // A private one only reaches its owner.
    alice.ok(Method::POST, &receipt("m.read.private", &reply), Some(json!({}))).await;
    alice.ok(Method::POST, &receipt("m.read", &reply), Some(json!({"thread_id": root}))).await;
    alice.ok(Method::POST, &receipt("m.read", &second), Some(json!({"thread_id": "main"}))).await;
    let (threaded, bob_since) = bob
        .sync_until(&bob_since, "alice's threaded receipts", |s| {
            let receipts = ephemeral(s, &room, "m.receipt");
            assert!(receipt_of(&receipts, &reply, "m.read.private", &alice.id).is_none(), "private leaked: {s}");
            let in_thread = receipt_of(&receipts, &reply, "m.read", &alice.id)?;
            let main = receipt_of(&receipts, &second, "m.read", &alice.id)?;
            Some((receipts, in_thread, main))
        })
        .await;
    let (events, in_thread, main) = threaded;
    assert_eq!(in_thread["thread_id"], root.as_str());
    assert_eq!(main["thread_id"], "main");
    assert!(events.len() >= 2, "one m.receipt per thread: {events:?}");
    let (private, _) = alice
        .sync_until(&alice_since, "her private receipt", |s| {
            receipt_of(&ephemeral(s, &room, "m.receipt"), &reply, "m.read.private", &alice.id)
        })
        .await;
    assert!(private["ts"].is_u64());

    // A newer receipt replaces the older one of its thread; an initial
    // sync shows the current ones (and private ones only to their owner).
    alice.ok(Method::POST, &receipt("m.read", &reply), Some(json!({}))).await;
    let fresh = bob.sync_since(None).await;
    let current = ephemeral(&fresh, &room, "m.receipt");
    assert!(receipt_of(&current, &reply, "m.read", &alice.id).is_some(), "{fresh}");
    assert!(receipt_of(&current, &second, "m.read", &alice.id).is_some_and(|r| r["thread_id"] == "main"), "{current:?}");
    assert!(receipt_of(&current, &reply, "m.read.private", &alice.id).is_none());
    for content in &current {
        if let Some(r) = content.get(&second).and_then(|e| e["m.read"].get(&alice.id)) {
            assert_eq!(r["thread_id"], "main", "the unthreaded receipt moved on to the reply: {current:?}");
        }
    }
    let alice_fresh = alice.sync_since(None).await;
    assert!(receipt_of(&ephemeral(&alice_fresh, &room, "m.receipt"), &reply, "m.read.private", &alice.id).is_some());

    // Bad receipts.
    assert_error(&alice.call(Method::POST, &receipt("m.unknown", &second), Some(json!({}))).await, 400, "M_INVALID_PARAM");
    assert_error(&alice.call(Method::POST, &receipt("m.read", &foreign), Some(json!({}))).await, 404, "M_NOT_FOUND");
    assert_error(&alice.call(Method::POST, &receipt("m.read", "$missing"), Some(json!({}))).await, 404, "M_NOT_FOUND");
    for thread in ["", "garbage"] {
        assert_error(
            &alice.call(Method::POST, &receipt("m.read", &second), Some(json!({"thread_id": thread}))).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    assert_error(
        &alice.call(Method::POST, &receipt("m.read", &second), Some(json!({"thread_id": foreign}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.call(Method::POST, &receipt("m.fully_read", &second), Some(json!({"thread_id": "main"}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&carol.call(Method::POST, &receipt("m.read", &second), Some(json!({}))).await, 403, "M_FORBIDDEN");

    // Read markers: the fully-read marker is room account data of its
    // owner; m.read in the same request is an ordinary receipt.
    let markers = format!("/rooms/{room}/read_markers");
    bob.ok(Method::POST, &markers, Some(json!({"m.fully_read": second, "m.read": second}))).await;
    let fully_read = bob.account_data_path(Some(&room), "m.fully_read");
    assert_eq!(bob.ok(Method::GET, &fully_read, None).await, json!({"event_id": second}));
    let (marker, bob_since) =
        bob.sync_until(&bob_since, "his fully-read marker", |s| room_account_data(s, &room, "m.fully_read").pop()).await;
    assert_eq!(marker, json!({"event_id": second}));
    let (bob_receipt, _) = alice
        .sync_until(&alice_since, "bob's receipt", |s| receipt_of(&ephemeral(s, &room, "m.receipt"), &second, "m.read", &bob.id))
        .await;
    assert!(bob_receipt["ts"].is_u64());
    assert!(alice.call(Method::GET, &alice.account_data_path(Some(&room), "m.fully_read"), None).await.0 == 404);
    // The receipt endpoint moves the marker too.
    bob.ok(Method::POST, &receipt("m.fully_read", &reply), Some(json!({}))).await;
    assert_eq!(bob.ok(Method::GET, &fully_read, None).await, json!({"event_id": reply}));
    let (marker, _) = bob.sync_until(&bob_since, "the moved marker", |s| room_account_data(s, &room, "m.fully_read").pop()).await;
    assert_eq!(marker, json!({"event_id": reply}));
    assert_error(&bob.call(Method::POST, &markers, Some(json!({"m.fully_read": foreign}))).await, 404, "M_NOT_FOUND");
    assert_error(&carol.call(Method::POST, &markers, Some(json!({"m.read": second}))).await, 403, "M_FORBIDDEN");
    server.stop().await.unwrap();
}

on_both_backends!(receipts_and_read_markers);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_member_and_runs_out() {
    let server = TestServer::start_with(Backend::Sqlite, with_metrics).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let since = next_batch(&bob.sync_since(None).await);
    let typing = |user: &User| format!("/rooms/{room}/typing/{}", user.id);

    // Bob is long-polling when alice starts typing.
    let poll = {
        let (url, token) = (bob.url(&format!("/sync?since={since}&timeout=20000")), bob.token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (call(Method::GET, &url, Some(&token), None).await, started.elapsed())
        })
    };
    wait_for_parked_polls(&server, 1).await;
    alice.ok(Method::PUT, &typing(&alice), Some(json!({"typing": true, "timeout": 30000}))).await;
    let ((status, woke), elapsed) = poll.await.unwrap();
    assert_eq!(status, 200, "{woke}");
    assert_eq!(ephemeral(&woke, &room, "m.typing"), [json!({"user_ids": [alice.id]})], "{woke}");
    assert!(elapsed < Duration::from_secs(15), "the long-poll was not woken: answered after {elapsed:?}");
    let since = next_batch(&woke);
    // Refreshing is no news; an initial sync shows who types.
    alice.ok(Method::PUT, &typing(&alice), Some(json!({"typing": true, "timeout": 30000}))).await;
    assert!(ephemeral(&bob.sync_since(Some(&since)).await, &room, "m.typing").is_empty());
    assert_eq!(ephemeral(&bob.sync_since(None).await, &room, "m.typing"), [json!({"user_ids": [alice.id]})]);

    // Stopping reaches bob as an empty list.
    alice.ok(Method::PUT, &typing(&alice), Some(json!({"typing": false}))).await;
    let (users, since) = bob.sync_until(&since, "alice stopping", |s| ephemeral(s, &room, "m.typing").pop()).await;
    assert_eq!(users, json!({"user_ids": []}));
    assert!(ephemeral(&bob.sync_since(None).await, &room, "m.typing").is_empty(), "nobody types: no m.typing at all");

    // A short timeout runs out by itself, and the waiting poll sees it.
    alice.ok(Method::PUT, &typing(&alice), Some(json!({"typing": true, "timeout": 300}))).await;
    let (users, since) = bob.sync_until(&since, "alice typing briefly", |s| ephemeral(s, &room, "m.typing").pop()).await;
    if users != json!({"user_ids": []}) {
        assert_eq!(users, json!({"user_ids": [alice.id]}));
        let (users, _) = bob.sync_until(&since, "the timeout running out", |s| ephemeral(s, &room, "m.typing").pop()).await;
        assert_eq!(users, json!({"user_ids": []}));
    }

    // Only for yourself, only where you are joined; `timeout` is required
    // when typing.
    assert_error(
        &bob.call(Method::PUT, &typing(&alice), Some(json!({"typing": true, "timeout": 1000}))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &carol.call(Method::PUT, &typing(&carol), Some(json!({"typing": true, "timeout": 1000}))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&alice.call(Method::PUT, &typing(&alice), Some(json!({"typing": true}))).await, 400, "M_BAD_JSON");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_users_are_hidden() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    // Bob's room, so that he may send state too.
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    alice.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    bob.say(&room, "b1", "before ignoring").await;
    let since = next_batch(&alice.sync_since(None).await);

    let ignore = alice.account_data_path(None, "m.ignored_user_list");
    alice.ok(Method::PUT, &ignore, Some(json!({"ignored_users": {bob.id.clone(): {}}}))).await;
    bob.say(&room, "b2", "while ignored").await;
    bob.ok(Method::PUT, &format!("/rooms/{room}/state/org.example.bob/"), Some(json!({"x": 1}))).await;
    alice.say(&room, "a1", "alice speaks").await;
    let mut timeline = Vec::new();
    let (_, since) = alice
        .sync_until(&since, "her own message", |s| {
            let events = s["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
            timeline.extend(events);
            (!messages_from(&Value::Array(timeline.clone()), &alice.id).is_empty()).then_some(())
        })
        .await;
    let timeline = Value::Array(timeline);
    assert!(messages_from(&timeline, &bob.id).is_empty(), "{timeline}");
    // State events of ignored users still arrive.
    assert!(timeline.as_array().unwrap().iter().any(|e| e["type"] == "org.example.bob"), "{timeline}");
    let page = alice.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=50"), None).await;
    assert!(messages_from(&page["chunk"], &bob.id).is_empty(), "{page}");
    assert_eq!(messages_from(&page["chunk"], &alice.id), ["alice speaks"]);
    let initial = alice.sync_since(None).await;
    assert!(messages_from(&initial["rooms"]["join"][&room]["timeline"]["events"], &bob.id).is_empty());

    // Invites from ignored users are not delivered; others are.
    let from_bob = bob.create_room(json!({"invite": [alice.id]})).await;
    let from_carol = carol.create_room(json!({"invite": [alice.id]})).await;
    let (_, since) = alice.sync_until(&since, "carol's invite", |s| s["rooms"]["invite"].get(&from_carol).cloned()).await;
    assert!(alice.sync_since(None).await["rooms"]["invite"].get(&from_bob).is_none());

    // Unignoring: bob's later messages arrive again.
    alice.ok(Method::PUT, &ignore, Some(json!({"ignored_users": {}}))).await;
    bob.say(&room, "b3", "after unignoring").await;
    let (bodies, _) = alice
        .sync_until(&since, "bob again", |s| {
            let bodies = messages_from(&s["rooms"]["join"][&room]["timeline"]["events"], &bob.id);
            (!bodies.is_empty()).then_some(bodies)
        })
        .await;
    assert_eq!(bodies, ["after unignoring"]);
    server.stop().await.unwrap();
}

mod sdk {
    use std::time::Duration;

    use chancery_testkit::{Backend, TestServer};
    use matrix_sdk::Client;
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::ruma::api::client::receipt::create_receipt::v3::ReceiptType as SendReceiptType;
    use matrix_sdk::ruma::api::client::room::create_room;
    use matrix_sdk::ruma::events::receipt::{ReceiptThread, ReceiptType};
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    use super::PASSWORD;
    use crate::common::register;

    async fn logged_in(base: &str, name: &str) -> Client {
        register(base, name).await;
        let client = Client::builder().homeserver_url(base).build().await.unwrap();
        client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
        client
    }

    fn settings() -> SyncSettings {
        SyncSettings::default().timeout(Duration::from_secs(5))
    }

    /// Syncs (at most 20 rounds) until `done` holds.
    async fn sync_until<F: AsyncFnMut(&Client) -> bool>(client: &Client, what: &str, mut done: F) {
        for _ in 0..20 {
            client.sync_once(settings()).await.unwrap();
            if done(client).await {
                return;
            }
        }
        panic!("{} never saw: {what}", client.user_id().unwrap());
    }

    /// Element's read state, tags, DM list and typing through matrix-sdk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn matrix_sdk_sees_typing_receipts_tags_and_direct_chats() {
        let server = TestServer::start(Backend::Sqlite).await.unwrap();
        let base = server.base_url.clone();
        let alice = logged_in(&base, "alice").await;
        let bob = logged_in(&base, "bob").await;
        let bob_id = bob.user_id().unwrap().to_owned();
        let alice_id = alice.user_id().unwrap().to_owned();
        alice.sync_once(settings()).await.unwrap();
        bob.sync_once(settings()).await.unwrap();

        let mut request = create_room::v3::Request::new();
        request.invite = vec![bob_id.clone()];
        request.is_direct = true;
        let room = alice.create_room(request).await.unwrap();
        let room_id = room.room_id().to_owned();
        bob.join_room_by_id(&room_id).await.unwrap();
        let sent = room.send(RoomMessageEventContent::text_plain("Briefing at 10")).await.unwrap();
        let event_id = sent.response.event_id;

        // Typing: bob's client is told alice types.
        let bob_room = {
            let room_id = room_id.clone();
            sync_until(&bob, "the joined room", async |c| c.get_room(&room_id).is_some()).await;
            bob.get_room(&room_id).unwrap()
        };
        let (_guard, mut typing) = bob_room.subscribe_to_typing_notifications();
        room.typing_notice(true).await.unwrap();
        sync_until(&bob, "alice typing", async |_| matches!(typing.try_recv(), Ok(users) if users == [alice_id.clone()])).await;

        // Receipts: bob's client knows what alice has read.
        room.send_single_receipt(SendReceiptType::Read, ReceiptThread::Unthreaded, event_id.clone()).await.unwrap();
        sync_until(&bob, "alice's receipt", async |_| {
            let got = bob_room.load_user_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, &alice_id).await.unwrap();
            got.is_some_and(|(read, _)| read == event_id)
        })
        .await;

        // Tags and the DM list come back to alice's client.
        room.set_is_favourite(true, None).await.unwrap();
        alice.account().mark_as_dm(&room_id, std::slice::from_ref(&bob_id)).await.unwrap();
        sync_until(&alice, "the favourite tag and the DM", async |c| {
            let room = c.get_room(&room_id).unwrap();
            room.is_favourite() && room.is_direct().await.unwrap()
        })
        .await;
        server.stop().await.unwrap();
    }
}
