//! Room rules and sync semantics over plain HTTP: versions, permissions,
//! limits, idempotency, gappy timelines, long-poll wake-ups, restarts.

use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{User, assert_error, call, status_reaches, urlencode, wait_for_parked_polls, with_metrics};

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn room_rules(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;

    for version in ["10", "11", "12"] {
        let room = alice.create_room(json!({"room_version": version, "name": format!("v{version}")})).await;
        assert_eq!(room.contains(':'), version != "12", "{version}: {room}");
        let create = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.create/"), None).await;
        assert_eq!(create["room_version"], version);
        alice.say(&room, &format!("t{version}"), "hello").await;
        let name = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.name"), None).await;
        assert_eq!(name, json!({"name": format!("v{version}")}));
    }
    assert_error(
        &alice.call(Method::POST, "/createRoom", Some(json!({"room_version": "9"}))).await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );

    // A private room: bob may not join uninvited.
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    assert_error(&bob.call(Method::POST, &format!("/rooms/{private}/join"), Some(json!({}))).await, 403, "M_FORBIDDEN");
    assert_error(&bob.call(Method::GET, &format!("/rooms/{private}/messages?dir=b"), None).await, 403, "M_FORBIDDEN");
    // Outsiders learn nothing about who is in the room.
    assert_error(
        &bob.call(Method::POST, &format!("/rooms/{private}/invite"), Some(json!({"user_id": alice.id}))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.call(Method::POST, &format!("/rooms/{private}/kick"), Some(json!({"user_id": alice.id}))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.call(Method::PUT, &format!("/rooms/{private}/send/m.room.message/x"), Some(json!({"body": "hi"}))).await,
        403,
        "M_FORBIDDEN",
    );

    // A public room: bob joins, but cannot rename it (state_default 50).
    let public = alice.create_room(json!({"preset": "public_chat", "room_version": "12"})).await;
    bob.ok(Method::POST, &format!("/join/{public}"), Some(json!({}))).await;
    assert_error(
        &bob.call(Method::PUT, &format!("/rooms/{public}/state/m.room.name/"), Some(json!({"name": "mine"}))).await,
        403,
        "M_FORBIDDEN",
    );
    let b1 = bob.say(&public, "b1", "hi from bob").await;
    let root = alice.say(&public, "root", "a thread root").await;
    // A reply in the thread: a thread cannot start at it (threads do not nest).
    let nested = alice
        .send(&public, "nested", json!({"body": "in the thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}))
        .await;
    // Alice kicks bob: he can no longer send; bans keep him out.
    alice.ok(Method::POST, &format!("/rooms/{public}/kick"), Some(json!({"user_id": bob.id, "reason": "test"}))).await;
    assert_error(
        &bob.call(Method::PUT, &format!("/rooms/{public}/send/m.room.message/b2"), Some(json!({"body": "x"}))).await,
        403,
        "M_FORBIDDEN",
    );
    // Nor start a thread: the event it would start at is not looked at for
    // him (a member would hear that threads do not nest).
    let reply = json!({"body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": nested}});
    assert_error(
        &bob.call(Method::PUT, &format!("/rooms/{public}/send/m.room.message/b3"), Some(reply)).await,
        403,
        "M_FORBIDDEN",
    );
    // A retried transaction still answers with the event it sent.
    let again = bob.ok(Method::PUT, &format!("/rooms/{public}/send/m.room.message/b1"), Some(json!({"body": "hi"}))).await;
    assert_eq!(again["event_id"], b1.as_str());
    // A transaction id answers only for the room it was used in.
    assert_error(
        &alice.call(Method::PUT, &format!("/rooms/{private}/send/m.room.message/root"), Some(json!({"body": "x"}))).await,
        400,
        "M_INVALID_PARAM",
    );
    // A room the server does not know answers as one the sender is not in.
    assert_error(
        &bob.call(Method::PUT, "/rooms/!unknown:localhost/send/m.room.message/u", Some(json!({"body": "x"}))).await,
        403,
        "M_FORBIDDEN",
    );
    alice.ok(Method::POST, &format!("/rooms/{public}/ban"), Some(json!({"user_id": bob.id}))).await;
    assert_error(&bob.call(Method::POST, &format!("/rooms/{public}/join"), Some(json!({}))).await, 403, "M_FORBIDDEN");
    alice.ok(Method::POST, &format!("/rooms/{public}/unban"), Some(json!({"user_id": bob.id}))).await;
    bob.ok(Method::POST, &format!("/rooms/{public}/join"), Some(json!({}))).await;
    // Bob (power 0) cannot kick alice.
    assert_error(
        &bob.call(Method::POST, &format!("/rooms/{public}/kick"), Some(json!({"user_id": alice.id}))).await,
        403,
        "M_FORBIDDEN",
    );
    let members = alice.ok(Method::GET, &format!("/rooms/{public}/joined_members"), None).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);
    let joined = bob.ok(Method::GET, "/joined_rooms", None).await;
    assert_eq!(joined["joined_rooms"], json!([public]));

    // Bad input.
    let big = "x".repeat(70_000);
    assert_error(
        &alice.call(Method::PUT, &format!("/rooms/{public}/send/m.room.message/big"), Some(json!({"body": big}))).await,
        413,
        "M_TOO_LARGE",
    );
    assert_error(
        &alice.call(Method::PUT, "/rooms/not-a-room/send/m.room.message/t", Some(json!({}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.call(Method::PUT, &format!("/rooms/{public}/send/m.room.message/t"), Some(json!([1]))).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(&alice.call(Method::GET, "/rooms/!unknown:localhost/state", None).await, 403, "M_FORBIDDEN");
    assert_error(&alice.call(Method::GET, &format!("/rooms/{public}/state/m.room.topic/"), None).await, 404, "M_NOT_FOUND");
    assert_error(
        &alice.call(Method::GET, &format!("/rooms/{public}/messages?dir=b&from=garbage"), None).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice
            .call(Method::PUT, &format!("/rooms/{public}/state/m.room.member/{}", bob.id), Some(json!({"membership": "join"})))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let long_key = "k".repeat(300);
    assert_error(
        &alice.call(Method::PUT, &format!("/rooms/{public}/state/org.example/{long_key}"), Some(json!({}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.call(Method::POST, &format!("/rooms/{public}/invite"), Some(json!({"user_id": "@nobody:localhost"}))).await,
        404,
        "M_NOT_FOUND",
    );

    // Redactions have their own transaction ids: a message sent with a
    // txn id that looks like one does not swallow a redaction.
    let tricky = alice.say(&public, "redact:x", "tricky").await;
    let redaction = alice.ok(Method::PUT, &format!("/rooms/{public}/redact/{tricky}/x"), Some(json!({}))).await;
    assert_ne!(redaction["event_id"].as_str().unwrap(), tricky);

    // Sends are idempotent per device and transaction id.
    let first = alice.say(&public, "same-txn", "once").await;
    let again = alice.say(&public, "same-txn", "once").await;
    assert_eq!(first, again);
    let page = alice.ok(Method::GET, &format!("/rooms/{public}/messages?dir=b&limit=3"), None).await;
    let bodies: Vec<_> = page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies.iter().filter(|b| **b == "once").count(), 1);
    assert_eq!(page["chunk"][0]["unsigned"]["transaction_id"], "same-txn");

    // /messages filters: by type and sender, with lazy-loaded members.
    let filter = urlencode(r#"{"types":["m.room.message"],"not_senders":["@alice:localhost"],"lazy_load_members":true}"#);
    let page = alice.ok(Method::GET, &format!("/rooms/{public}/messages?dir=b&limit=50&filter={filter}"), None).await;
    let chunk = page["chunk"].as_array().unwrap();
    assert!(!chunk.is_empty());
    assert!(chunk.iter().all(|e| e["type"] == "m.room.message" && e["sender"] == bob.id.as_str()), "{page}");
    let state = page["state"].as_array().unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0]["state_key"], bob.id.as_str());
    server.stop().await.unwrap();
}

on_both_backends!(room_rules);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_timelines_long_poll_and_restart() {
    let mut server = TestServer::start_with(Backend::Sqlite, with_metrics).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat", "name": "Ops"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;

    // Initial sync: full state, timeline within the default limit.
    let initial = bob.sync("").await;
    let joined = &initial["rooms"]["join"][&room];
    let state_types: Vec<_> =
        joined["state"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    let timeline_types: Vec<_> =
        joined["timeline"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    let all: Vec<_> = state_types.iter().chain(&timeline_types).collect();
    for needed in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.name"] {
        assert!(all.iter().any(|t| *t == needed), "{needed} missing: {joined}");
    }
    assert_eq!(joined["summary"]["m.joined_member_count"], 2);
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    // Gappy: 30 messages with a limit of 5.
    for i in 0..30 {
        alice.say(&room, &format!("g{i}"), &format!("g{i}")).await;
    }
    let filter = r#"{"room":{"timeline":{"limit":5}}}"#;
    let gappy = bob.sync(&format!("since={since}&filter={}", urlencode(filter))).await;
    assert_eq!(timeline_bodies(&gappy, &room), ["g25", "g26", "g27", "g28", "g29"]);
    assert_eq!(gappy["rooms"]["join"][&room]["timeline"]["limited"], true);
    let prev_batch = gappy["rooms"]["join"][&room]["timeline"]["prev_batch"].as_str().unwrap();
    let earlier = bob.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=3&from={prev_batch}"), None).await;
    let bodies: Vec<_> =
        earlier["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap_or("")).collect();
    assert_eq!(bodies, ["g24", "g23", "g22"]);
    let since = gappy["next_batch"].as_str().unwrap().to_owned();

    // A stored filter gives the same answer as the inline one.
    let filter_id = bob.ok(Method::POST, &format!("/user/{}/filter", bob.id), Some(serde_json::from_str(filter).unwrap())).await;
    let filter_id = filter_id["filter_id"].as_str().unwrap().to_owned();
    let again = bob.ok(Method::POST, &format!("/user/{}/filter", bob.id), Some(serde_json::from_str(filter).unwrap())).await;
    assert_eq!(again["filter_id"], filter_id.as_str());
    assert_eq!(
        bob.ok(Method::GET, &format!("/user/{}/filter/{filter_id}", bob.id), None).await,
        serde_json::from_str::<Value>(filter).unwrap()
    );
    assert_error(&alice.call(Method::GET, &format!("/user/{}/filter/{filter_id}", bob.id), None).await, 403, "M_FORBIDDEN");

    // Long-poll: a sync waiting with nothing new is woken by a send.
    let poll = {
        let (url, token) = (bob.url(&format!("/sync?since={since}&timeout=20000&filter={filter_id}")), bob.token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let got = call(Method::GET, &url, Some(&token), None).await;
            (got, started.elapsed())
        })
    };
    wait_for_parked_polls(&server, 1).await;
    alice.say(&room, "wake", "wake up").await;
    let ((status, woke), elapsed) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(timeline_bodies(&woke, &room), ["wake up"]);
    assert!(elapsed < Duration::from_secs(20), "long-poll was not woken");
    let since = woke["next_batch"].as_str().unwrap().to_owned();

    // An empty incremental sync with timeout=0 returns at once with no rooms.
    let empty = bob.sync(&format!("since={since}&timeout=0")).await;
    assert!(empty["rooms"]["join"].as_object().unwrap().is_empty(), "{empty}");

    // Restart between two syncs: nothing lost, nothing repeated.
    alice.say(&room, "before-restart", "before restart").await;
    server.restart().await.unwrap();
    let bob = User { base: server.base_url.clone(), ..bob };
    let alice = User { base: server.base_url.clone(), ..alice };
    alice.say(&room, "after-restart", "after restart").await;
    let after = bob.sync(&format!("since={since}")).await;
    assert_eq!(timeline_bodies(&after, &room), ["before restart", "after restart"]);
    let next = after["next_batch"].as_str().unwrap();
    let none = bob.sync(&format!("since={next}&timeout=0")).await;
    assert!(timeline_bodies(&none, &room).is_empty());

    // Leaving shows up in the leave section once.
    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    let left = bob.sync(&format!("since={next}")).await;
    assert!(left["rooms"]["leave"][&room]["timeline"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.member"));
    assert!(left["rooms"]["join"].get(&room).is_none());
    server.stop().await.unwrap();
}

/// Two nodes on one PostgreSQL database: a long-polling sync on one node is
/// woken by a message sent through the other (LISTEN/NOTIFY), and both
/// serve the same rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_rooms_and_wake_each_others_syncs() {
    let first = TestServer::start_with(Backend::Postgres, with_metrics).await.unwrap();
    let second = first.another_node().await.unwrap();
    let alice = User::new(&first.base_url, "alice").await;
    let bob_on_first = User::new(&first.base_url, "bob").await;
    let bob = User { base: second.base_url.clone(), ..bob_on_first };
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();

    // Fails unless the other node's commit wakes the poll well before its timeout.
    let woke = woken_by(&second, &bob, &since, async {
        alice.say(&room, "cross-node", "from the first node").await;
    })
    .await;
    assert_eq!(timeline_bodies(&woke, &room), ["from the first node"]);
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// Two nodes on one PostgreSQL database share typing and presence, which
/// live in memory: a user typing on one node wakes a sync on the other
/// with the typing list, stopping clears it there, and a status set on one
/// node is what the other answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_typing_and_presence() {
    let first = TestServer::start_with(Backend::Postgres, |c| {
        with_metrics(c);
        c.presence.enabled = true;
    })
    .await
    .unwrap();
    let second = first.another_node().await.unwrap();
    let alice = User::new(&first.base_url, "alice").await;
    let bob_on_first = User::new(&first.base_url, "bob").await;
    let bob = User { base: second.base_url.clone(), ..bob_on_first };
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let since = bob.sync("set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();

    let typing_of = |sync: &Value| -> Option<Value> {
        sync["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()?
            .iter()
            .find(|e| e["type"] == "m.typing")
            .map(|e| e["content"]["user_ids"].clone())
    };
    let got = woken_by(&second, &bob, &since, async {
        alice
            .ok(Method::PUT, &format!("/rooms/{room}/typing/{}", alice.id), Some(json!({"typing": true, "timeout": 20000})))
            .await;
    })
    .await;
    assert_eq!(typing_of(&got), Some(json!([alice.id])), "{got}");
    let since = got["next_batch"].as_str().unwrap().to_owned();
    let got = woken_by(&second, &bob, &since, async {
        alice.ok(Method::PUT, &format!("/rooms/{room}/typing/{}", alice.id), Some(json!({"typing": false}))).await;
    })
    .await;
    assert_eq!(typing_of(&got), Some(json!([])), "{got}");

    status_reaches(&alice, &bob, "in a meeting").await;
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// History visibility: under `joined`, a newcomer does not see what was
/// said before; a former member still reads what they were there for, not
/// what came after; outsiders read nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_visibility_is_enforced() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let room = alice
        .create_room(json!({"preset": "private_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    alice.say(&room, "s1", "secret before").await;
    alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": bob.id}))).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let after_join = alice.say(&room, "s2", "after join").await;

    let bodies = |page: &Value| -> Vec<String> {
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
    };
    let page = bob.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=50"), None).await;
    assert_eq!(bodies(&page), ["after join"]);
    let sync = bob.sync("").await;
    assert_eq!(timeline_bodies(&sync, &room), ["after join"]);
    let context = bob.ok(Method::GET, &format!("/rooms/{room}/context/{after_join}?limit=10"), None).await;
    let before: Vec<_> =
        context["events_before"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert!(before.is_empty(), "{context}");
    let page = alice.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=50"), None).await;
    assert_eq!(bodies(&page), ["after join", "secret before"]);

    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    let later = alice.say(&room, "s3", "after leave").await;
    let page = bob.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=50"), None).await;
    assert_eq!(bodies(&page), ["after join"]);
    assert_error(&bob.call(Method::GET, &format!("/rooms/{room}/event/{later}"), None).await, 404, "M_NOT_FOUND");
    assert_error(&carol.call(Method::GET, &format!("/rooms/{room}/messages?dir=b"), None).await, 403, "M_FORBIDDEN");
    server.stop().await.unwrap();
}

/// A long-poll under way: its answer and how long it took.
type LongPoll = tokio::task::JoinHandle<((StatusCode, Value), Duration)>;

/// A long-poll of `user` from `since` (30 s), started in the background.
fn start_long_poll(user: &User, since: &str) -> LongPoll {
    let (url, token) = (user.url(&format!("/sync?since={since}&timeout=30000&set_presence=offline")), user.token.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let got = call(Method::GET, &url, Some(&token), None).await;
        (got, started.elapsed())
    })
}

/// The answer of a long-poll; fails if it was not woken well before its
/// timeout.
async fn woken(poll: LongPoll) -> Value {
    let ((status, body), elapsed) = poll.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(elapsed < Duration::from_secs(15), "not woken: answered after {elapsed:?}: {body}");
    body
}

/// Starts `user`'s long-poll from `since` on `server` (the node `user`
/// talks to), runs `trigger` once the poll is parked there, and returns
/// its answer; fails if it was not woken well before its timeout.
async fn woken_by<F: std::future::Future<Output = ()>>(server: &TestServer, user: &User, since: &str, trigger: F) -> Value {
    let poll = start_long_poll(user, since);
    wait_for_parked_polls(server, 1).await;
    trigger.await;
    woken(poll).await
}

/// A room with more long-polls than are woken ahead of the sender's
/// answer: they are woken right after it, every one.
async fn many_long_polls_in_one_room_all_wake(backend: Backend) {
    let server = TestServer::start_with(backend, with_metrics).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    // Twelve of bob's syncs (over the eight woken before the sender).
    let polls: Vec<_> = (0..12).map(|_| start_long_poll(&bob, &since)).collect();
    wait_for_parked_polls(&server, 12).await;
    alice.say(&room, "m1", "to every poll").await;
    for poll in polls {
        assert_eq!(timeline_bodies(&woken(poll).await, &room), ["to every poll"]);
    }
    server.stop().await.unwrap();
}

on_both_backends!(many_long_polls_in_one_room_all_wake);

/// Long-polls wake for every kind of change that concerns their user (a
/// message in their room, an invite to a new room, their account data,
/// typing and receipts in their rooms), and only then; the room summary
/// comes with the room and with membership changes, not with every
/// message; sync serves events without `room_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_wake_for_what_concerns_them() {
    let server = TestServer::start_with(Backend::Sqlite, with_metrics).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let shared = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{shared}"), Some(json!({}))).await;
    let elsewhere = alice.create_room(json!({"preset": "public_chat"})).await;

    let initial = bob.sync("").await;
    let room = &initial["rooms"]["join"][&shared];
    assert_eq!(room["summary"]["m.joined_member_count"], 2, "{room}");
    assert_eq!(room["summary"]["m.heroes"], json!([alice.id]));
    for section in ["timeline", "state"] {
        for event in room[section]["events"].as_array().unwrap() {
            assert!(event.get("room_id").is_none(), "sync events carry no room_id: {event}");
            assert!(event["event_id"].is_string() && event["sender"].is_string(), "{event}");
        }
    }
    let mut since = initial["next_batch"].as_str().unwrap().to_owned();

    // A message in a room bob is not in does not answer his poll; the one
    // in his room does, alone, and without a summary (nothing changed).
    let got = woken_by(&server, &bob, &since, async {
        alice.say(&elsewhere, "e1", "not for bob").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice.say(&shared, "s1", "for bob").await;
    })
    .await;
    assert!(got["rooms"]["join"].get(&elsewhere).is_none(), "{got}");
    assert_eq!(timeline_bodies(&got, &shared), ["for bob"]);
    assert!(got["rooms"]["join"][&shared].get("summary").is_none(), "unchanged summary is omitted: {got}");
    since = got["next_batch"].as_str().unwrap().to_owned();

    // A membership change brings the summary again.
    let got = woken_by(&server, &bob, &since, async {
        carol.ok(Method::POST, &format!("/join/{shared}"), Some(json!({}))).await;
    })
    .await;
    let summary = &got["rooms"]["join"][&shared]["summary"];
    assert_eq!(summary["m.joined_member_count"], 3, "{got}");
    assert_eq!(summary["m.heroes"], json!([alice.id, carol.id]));
    since = got["next_batch"].as_str().unwrap().to_owned();

    // An invite to a room bob was never in.
    let fresh = alice.create_room(json!({"preset": "private_chat"})).await;
    let got = woken_by(&server, &bob, &since, async {
        alice.ok(Method::POST, &format!("/rooms/{fresh}/invite"), Some(json!({"user_id": bob.id}))).await;
    })
    .await;
    assert!(got["rooms"]["invite"].get(&fresh).is_some(), "{got}");
    since = got["next_batch"].as_str().unwrap().to_owned();

    // Joining it (from another device of his) puts it in his waiting set.
    let got = woken_by(&server, &bob, &since, async {
        bob.ok(Method::POST, &format!("/join/{fresh}"), Some(json!({}))).await;
    })
    .await;
    assert!(got["rooms"]["join"].get(&fresh).is_some(), "{got}");
    since = got["next_batch"].as_str().unwrap().to_owned();
    let got = woken_by(&server, &bob, &since, async {
        alice.say(&fresh, "f1", "in the new room").await;
    })
    .await;
    assert_eq!(timeline_bodies(&got, &fresh), ["in the new room"]);
    since = got["next_batch"].as_str().unwrap().to_owned();

    // His account data.
    let got = woken_by(&server, &bob, &since, async {
        bob.ok(Method::PUT, &format!("/user/{}/account_data/org.example.pref", bob.id), Some(json!({"n": 1}))).await;
    })
    .await;
    assert!(got["account_data"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "org.example.pref"), "{got}");
    since = got["next_batch"].as_str().unwrap().to_owned();

    // Typing, then a receipt, in his room.
    let got = woken_by(&server, &bob, &since, async {
        alice
            .ok(Method::PUT, &format!("/rooms/{shared}/typing/{}", alice.id), Some(json!({"typing": true, "timeout": 20000})))
            .await;
    })
    .await;
    let ephemeral = &got["rooms"]["join"][&shared]["ephemeral"]["events"];
    assert!(
        ephemeral.as_array().unwrap().iter().any(|e| e["type"] == "m.typing" && e["content"]["user_ids"] == json!([alice.id]))
    );
    since = got["next_batch"].as_str().unwrap().to_owned();
    let last = bob.ok(Method::GET, &format!("/rooms/{shared}/messages?dir=b&limit=1"), None).await["chunk"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = woken_by(&server, &bob, &since, async {
        alice.ok(Method::POST, &format!("/rooms/{shared}/receipt/m.read/{last}"), Some(json!({}))).await;
    })
    .await;
    let ephemeral = &got["rooms"]["join"][&shared]["ephemeral"]["events"];
    assert!(ephemeral.as_array().unwrap().iter().any(|e| e["type"] == "m.receipt"), "{got}");

    // Nothing for him: the poll runs to its timeout with no rooms.
    since = got["next_batch"].as_str().unwrap().to_owned();
    alice.say(&elsewhere, "e2", "still not for bob").await;
    let started = Instant::now();
    let idle = bob.sync(&format!("since={since}&timeout=1000")).await;
    assert!(started.elapsed() >= Duration::from_millis(900), "answered early: {idle}");
    assert!(idle["rooms"]["join"].as_object().unwrap().is_empty(), "{idle}");
    server.stop().await.unwrap();
}
