//! Simplified sliding sync (MSC4186) over plain HTTP, on SQLite and
//! PostgreSQL: what a connection sends and sends again, positions that
//! are lost, reused or not the caller's, bad requests, and (on
//! PostgreSQL) a connection carried on by another node.

use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{User, assert_error, call};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One request; `pos` and `timeout` go in the query string, as ruma and
/// matrix-sdk send them.
async fn sliding(user: &User, mut body: Value) -> (StatusCode, Value) {
    let mut query = Vec::new();
    for key in ["pos", "timeout"] {
        if let Some(value) = body.as_object_mut().and_then(|b| b.remove(key)) {
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            query.push(format!("{key}={}", crate::common::urlencode(&value)));
        }
    }
    let url = format!("{}{PATH}?{}", user.base, query.join("&"));
    call(Method::POST, &url, Some(&user.token), Some(body)).await
}

async fn sliding_ok(user: &User, body: Value) -> Value {
    let (status, answer) = sliding(user, body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A room list request as Element X's first one: the top 20 rooms with
/// one event each.
fn list_request(pos: Option<&str>, timeout_ms: u64) -> Value {
    let mut body = json!({
        "conn_id": "room-list",
        "lists": { "all": {
            "ranges": [[0, 19]],
            "timeline_limit": 1,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.create", ""]],
        }},
        "extensions": { "typing": { "enabled": true }, "receipts": { "enabled": true }, "account_data": { "enabled": true } },
        "timeout": timeout_ms,
    });
    if let Some(pos) = pos {
        body["pos"] = json!(pos);
    }
    body
}

fn timeline_bodies(room: &Value) -> Vec<String> {
    room["timeline"].as_array().into_iter().flatten().filter_map(|e| e["content"]["body"].as_str()).map(str::to_owned).collect()
}

async fn room_list_and_positions(backend: Backend) {
    let server = TestServer::start_with(backend, crate::common::with_metrics).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let mut rooms = Vec::new();
    for n in 0..3 {
        let room = alice.create_room(json!({ "name": format!("room {n}"), "preset": "public_chat" })).await;
        alice.say(&room, &format!("t{n}"), &format!("hello {n}")).await;
        rooms.push(room);
    }
    let space = alice.create_room(json!({ "name": "space", "creation_content": { "type": "m.space" } })).await;
    let invite = bob.create_room(json!({ "name": "from bob", "invite": [alice.id] })).await;

    // First answer: every room, newest first, each with its newest event.
    let first = sliding_ok(&alice, list_request(None, 0)).await;
    assert_eq!(first["lists"]["all"]["count"], 5, "{first}");
    let room0 = &first["rooms"][&rooms[0]];
    assert_eq!(room0["initial"], true);
    assert_eq!(room0["name"], "room 0");
    assert_eq!(timeline_bodies(room0), ["hello 0"]);
    assert_eq!(room0["limited"], true, "more events than the limit");
    assert_eq!(room0["joined_count"], 1);
    assert_eq!(room0["membership"], "join");
    assert!(room0["prev_batch"].is_string());
    let state_types: Vec<&str> = room0["required_state"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(state_types.contains(&"m.room.name") && state_types.contains(&"m.room.create"), "{state_types:?}");
    assert!(!state_types.contains(&"m.room.join_rules"), "only what was asked: {state_types:?}");
    // The invite is stripped state, named by its inviter.
    let invited = &first["rooms"][&invite];
    assert_eq!(invited["membership"], "invite");
    assert!(invited["invite_state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"), "{invited}");
    assert!(invited.get("timeline").is_none());
    // Bump stamps order the rooms as they were last active.
    let stamp = |r: &str| first["rooms"][r]["bump_stamp"].as_u64().unwrap();
    assert!(stamp(&invite) > stamp(&space) && stamp(&space) > stamp(&rooms[2]) && stamp(&rooms[2]) > stamp(&rooms[0]));
    // The default push rules come with a new connection's account data.
    let global = first["extensions"]["account_data"]["global"].as_array().unwrap();
    assert!(global.iter().any(|e| e["type"] == "m.push_rules"));
    let p1 = first["pos"].as_str().unwrap().to_owned();

    // Nothing new: an immediate answer without rooms.
    let idle = sliding_ok(&alice, list_request(Some(&p1), 0)).await;
    assert!(idle["rooms"].as_object().is_none_or(|r| r.is_empty()), "{idle}");

    // A message: only its room comes, not as initial, with the event live.
    alice.say(&rooms[0], "again", "news").await;
    let news = sliding_ok(&alice, list_request(Some(&p1), 0)).await;
    let updated = news["rooms"].as_object().unwrap();
    assert_eq!(updated.keys().collect::<Vec<_>>(), [&rooms[0]]);
    assert_eq!(updated[&rooms[0]].get("initial"), None);
    assert_eq!(timeline_bodies(&updated[&rooms[0]]), ["news"]);
    assert_eq!(updated[&rooms[0]]["num_live"], 1);
    let p2 = news["pos"].as_str().unwrap().to_owned();

    // The client lost that answer and asks from p1 again: same news.
    let again = sliding_ok(&alice, list_request(Some(&p1), 0)).await;
    assert_eq!(timeline_bodies(&again["rooms"][&rooms[0]]), ["news"]);
    let p3 = again["pos"].as_str().unwrap().to_owned();
    // ...and p2, never acknowledged, is gone.
    assert_error(&sliding(&alice, list_request(Some(&p2), 0)).await, 400, "M_UNKNOWN_POS");

    // A longer timeline for a subscribed room sends its history again.
    let mut subscribed = list_request(Some(&p3), 0);
    subscribed["room_subscriptions"] = json!({ &rooms[1]: { "timeline_limit": 10, "required_state": [["m.room.topic", ""]] } });
    let expanded = sliding_ok(&alice, subscribed).await;
    let room1 = &expanded["rooms"][&rooms[1]];
    assert_eq!(room1["expanded_timeline"], true, "{room1}");
    assert!(timeline_bodies(room1).contains(&"hello 1".to_owned()));
    let p4 = expanded["pos"].as_str().unwrap().to_owned();

    // A long-poll is woken by a message in a room of the list.
    let waiting = {
        let alice = User { base: alice.base.clone(), token: alice.token.clone(), id: alice.id.clone() };
        let p4 = p4.clone();
        tokio::spawn(async move { sliding_ok(&alice, list_request(Some(&p4), 20_000)).await })
    };
    crate::common::wait_for_parked_polls(&server, 1).await;
    let started = Instant::now();
    bob.ok(Method::POST, &format!("/rooms/{}/join", rooms[2]), Some(json!({}))).await;
    let woken = tokio::time::timeout(Duration::from_secs(15), waiting).await.expect("woken in time").unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(woken["rooms"][&rooms[2]].is_object(), "{woken}");
    assert_eq!(woken["rooms"][&rooms[2]]["joined_count"], 2);

    // Positions are the caller's alone.
    let p5 = woken["pos"].as_str().unwrap();
    assert_error(&sliding(&bob, list_request(Some(p5), 0)).await, 400, "M_UNKNOWN_POS");
    let mut other_conn = list_request(Some(p5), 0);
    other_conn["conn_id"] = json!("encryption");
    assert_error(&sliding(&alice, other_conn).await, 400, "M_UNKNOWN_POS");
    for bad in ["garbage", "99999_1", "1_99999", ""] {
        assert_error(&sliding(&alice, list_request(Some(bad), 0)).await, 400, "M_UNKNOWN_POS");
    }
    // Restarting the connection forgets the old positions; the client
    // recovers by starting again, getting everything.
    let fresh = sliding_ok(&alice, list_request(None, 0)).await;
    assert_error(&sliding(&alice, list_request(Some(p5), 0)).await, 400, "M_UNKNOWN_POS");
    assert_eq!(fresh["rooms"].as_object().unwrap().len(), 5);

    // Filters: spaces only, invites only, no spaces.
    let mut filtered = list_request(None, 0);
    filtered["conn_id"] = json!("filters");
    filtered["lists"] = json!({
        "spaces": { "ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": { "room_types": ["m.space"] } },
        "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": { "is_invite": true } },
        "rooms": { "ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": { "not_room_types": ["m.space"] } },
    });
    let lists = sliding_ok(&alice, filtered).await;
    assert_eq!(lists["lists"]["spaces"]["count"], 1);
    assert_eq!(lists["lists"]["invites"]["count"], 1);
    assert_eq!(lists["lists"]["rooms"]["count"], 4);
    assert_eq!(lists["rooms"][&space]["lists"], json!(["spaces"]));
}
on_both_backends!(room_list_and_positions);

async fn bad_requests(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let mut backwards = list_request(None, 0);
    backwards["lists"]["all"]["ranges"] = json!([[5, 2]]);
    assert_error(&sliding(&alice, backwards).await, 400, "M_INVALID_PARAM");
    let mut many = list_request(None, 0);
    let lists: serde_json::Map<String, Value> =
        (0..101).map(|n| (format!("l{n}"), json!({ "ranges": [[0, 1]], "timeline_limit": 1, "required_state": [] }))).collect();
    many["lists"] = Value::Object(lists);
    assert_error(&sliding(&alice, many).await, 400, "M_INVALID_PARAM");
    let mut big_state = list_request(None, 0);
    let pairs: Vec<Value> = (0..101).map(|n| json!([format!("org.example.{n}"), ""])).collect();
    big_state["lists"]["all"]["required_state"] = Value::Array(pairs);
    assert_error(&sliding(&alice, big_state).await, 400, "M_INVALID_PARAM");
    let mut subs = list_request(None, 0);
    let rooms: serde_json::Map<String, Value> =
        (0..101).map(|n| (format!("!r{n}:localhost"), json!({ "timeline_limit": 1, "required_state": [] }))).collect();
    subs["room_subscriptions"] = Value::Object(rooms);
    assert_error(&sliding(&alice, subs).await, 400, "M_INVALID_PARAM");
    let mut long_conn = list_request(None, 0);
    long_conn["conn_id"] = json!("x".repeat(65));
    assert_error(&sliding(&alice, long_conn).await, 400, "M_INVALID_PARAM");
    let (status, body) =
        call(Method::POST, &format!("{}{PATH}", alice.base), Some(&alice.token), Some(json!({"lists": 5}))).await;
    assert_eq!(status, 400, "{body}");
    // Without a token.
    assert_error(&call(Method::POST, &format!("{}{PATH}", alice.base), None, Some(json!({}))).await, 401, "M_MISSING_TOKEN");
    // A subscription to a room the user has nothing to do with is ignored.
    let stranger = User::new(&server.base_url, "stranger").await;
    let secret = stranger.create_room(json!({ "preset": "private_chat" })).await;
    let mut peek = list_request(None, 0);
    peek["room_subscriptions"] = json!({ &secret: { "timeline_limit": 5, "required_state": [["*", "*"]] } });
    let answer = sliding_ok(&alice, peek).await;
    assert!(answer["rooms"].get(&secret).is_none(), "{answer}");
    // The feature is advertised, so clients find it.
    let (_, versions) = call(Method::GET, &format!("{}/_matrix/client/versions", alice.base), None, None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true);
}
on_both_backends!(bad_requests);

/// Two nodes on one PostgreSQL database: a connection started on one
/// goes on on the other, which knows what was already sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_between_nodes() {
    let first = TestServer::start(Backend::Postgres).await.unwrap();
    let second = first.another_node().await.unwrap();
    let alice = User::new(&first.base_url, "alice").await;
    let room = alice.create_room(json!({ "name": "shared" })).await;
    alice.say(&room, "t1", "before").await;
    let answer = sliding_ok(&alice, list_request(None, 0)).await;
    assert_eq!(timeline_bodies(&answer["rooms"][&room]), ["before"]);
    let pos = answer["pos"].as_str().unwrap().to_owned();
    let on_second = User { base: second.base_url.clone(), token: alice.token.clone(), id: alice.id.clone() };
    let idle = sliding_ok(&on_second, list_request(Some(&pos), 0)).await;
    assert!(idle["rooms"].as_object().is_none_or(|r| r.is_empty()), "the other node knows the room was sent: {idle}");
    alice.say(&room, "t2", "after").await;
    let pos = idle["pos"].as_str().unwrap().to_owned();
    let news = sliding_ok(&alice, list_request(Some(&pos), 0)).await;
    assert_eq!(timeline_bodies(&news["rooms"][&room]), ["after"]);
    assert_eq!(news["rooms"][&room].get("initial"), None);
}

/// A rejected invite leaves the list with the user's own leave and
/// nothing of the room; an invite from an ignored user never shows.
async fn rejected_and_ignored_invites(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let carol = User::new(&server.base_url, "carol").await;
    alice
        .ok(
            Method::PUT,
            &format!("/user/{}/account_data/m.ignored_user_list", alice.id),
            Some(json!({
                "ignored_users": { &carol.id: {} }
            })),
        )
        .await;
    let secret = bob.create_room(json!({ "name": "secret plans", "topic": "private", "invite": [alice.id] })).await;
    let ignored = carol.create_room(json!({ "name": "spam", "invite": [alice.id] })).await;
    let first = sliding_ok(&alice, list_request(None, 0)).await;
    assert_eq!(first["rooms"][&secret]["membership"], "invite");
    assert!(first["rooms"].get(&ignored).is_none(), "an ignored user's invite: {first}");
    let pos = first["pos"].as_str().unwrap().to_owned();

    alice.ok(Method::POST, &format!("/rooms/{secret}/leave"), Some(json!({}))).await;
    bob.say(&secret, "t1", "after alice left").await;
    let after = sliding_ok(&alice, list_request(Some(&pos), 0)).await;
    let left = &after["rooms"][&secret];
    assert_eq!(left["membership"], "leave", "{after}");
    let state = left["required_state"].as_array().unwrap();
    assert_eq!(state.len(), 1, "only her own leave: {left}");
    assert_eq!(state[0]["state_key"], alice.id);
    assert_eq!(state[0]["content"]["membership"], "leave");
    assert!(left.get("name").is_none() && left.get("joined_count").is_none(), "{left}");
    assert!(timeline_bodies(left).is_empty(), "{left}");
}
on_both_backends!(rejected_and_ignored_invites);

/// A kicked user's room stays in the list, as a leave, even on a
/// connection that never sent it (as Synapse lists kicks), so the client
/// learns why it is gone; a room left by oneself is not listed there.
async fn kicked_rooms_are_listed(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let kicked_from = bob.create_room(json!({ "name": "kicked from", "preset": "public_chat" })).await;
    let left = bob.create_room(json!({ "name": "left", "preset": "public_chat" })).await;
    for room in [&kicked_from, &left] {
        alice.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    }
    bob.ok(Method::POST, &format!("/rooms/{kicked_from}/kick"), Some(json!({ "user_id": alice.id, "reason": "enough" }))).await;
    alice.ok(Method::POST, &format!("/rooms/{left}/leave"), Some(json!({}))).await;

    let first = sliding_ok(&alice, list_request(None, 0)).await;
    assert_eq!(first["lists"]["all"]["count"], 1, "{first}");
    let room = &first["rooms"][&kicked_from];
    assert_eq!(room["membership"], "leave", "{first}");
    // Shown as it was when she was kicked: the kick is its newest event.
    let own = room["required_state"].as_array().unwrap().iter().find(|e| e["state_key"] == alice.id.as_str()).cloned();
    let own = own.unwrap_or_else(|| panic!("her membership in {room}"));
    assert_eq!((own["content"]["membership"].as_str(), own["sender"].as_str()), (Some("leave"), Some(bob.id.as_str())));
    assert!(first["rooms"].get(&left).is_none(), "{first}");
}
on_both_backends!(kicked_rooms_are_listed);

/// A list whose `count` alone changed (a room left outside its range)
/// answers a waiting long-poll at once with the new count.
async fn a_count_change_alone_answers_a_long_poll(backend: Backend) {
    let server = TestServer::start_with(backend, crate::common::with_metrics).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let oldest = alice.create_room(json!({ "name": "oldest" })).await;
    for name in ["middle", "newest"] {
        alice.create_room(json!({ "name": name })).await;
    }
    let mut request = list_request(None, 0);
    request["lists"]["all"]["ranges"] = json!([[0, 0]]);
    let first = sliding_ok(&alice, request.clone()).await;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    assert!(first["rooms"].get(&oldest).is_none(), "outside the range: {first}");
    request["pos"] = first["pos"].clone();
    request["timeout"] = json!(20_000);
    let started = Instant::now();
    let leave = async {
        // Once the long-poll waits, alice leaves the room outside the range.
        crate::common::wait_for_parked_polls(&server, 1).await;
        alice.ok(Method::POST, &format!("/rooms/{oldest}/leave"), Some(json!({}))).await;
    };
    let (answer, ()) = tokio::join!(sliding_ok(&alice, request), leave);
    let took = started.elapsed();
    assert_eq!(answer["lists"]["all"]["count"], 2, "{answer}");
    assert!(took < Duration::from_secs(15), "answered at the leave, not at the timeout ({took:?})");
}
on_both_backends!(a_count_change_alone_answers_a_long_poll);

/// The receipts extension covers the rooms its `lists` and `rooms` name
/// (all of the request's when absent, none of a kind when empty).
async fn extensions_follow_their_lists_and_rooms(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let mut rooms = Vec::new();
    for name in ["first", "second"] {
        let room = bob.create_room(json!({ "name": name, "preset": "public_chat" })).await;
        alice.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
        let event = bob.say(&room, &format!("t-{name}"), "hello").await;
        bob.ok(Method::POST, &format!("/rooms/{room}/receipt/m.read/{event}"), Some(json!({}))).await;
        rooms.push(room);
    }
    let receipts_for = |answer: &Value| -> Vec<String> {
        let mut with: Vec<String> =
            answer["extensions"]["receipts"]["rooms"].as_object().map(|r| r.keys().cloned().collect()).unwrap_or_default();
        with.sort_unstable();
        with
    };
    let mut all = rooms.clone();
    all.sort_unstable();

    let mut request = list_request(None, 0);
    request["extensions"]["receipts"] = json!({ "enabled": true });
    assert_eq!(receipts_for(&sliding_ok(&alice, request.clone()).await), all, "absent lists and rooms: all of them");

    request["conn_id"] = json!("scoped");
    request["room_subscriptions"] = json!({ &rooms[0]: { "timeline_limit": 1 } });
    request["extensions"]["receipts"] = json!({ "enabled": true, "lists": [], "rooms": [&rooms[0]] });
    assert_eq!(receipts_for(&sliding_ok(&alice, request.clone()).await), [rooms[0].clone()], "the one room named");

    request["conn_id"] = json!("none");
    request["extensions"]["receipts"] = json!({ "enabled": true, "lists": [], "rooms": [] });
    assert!(receipts_for(&sliding_ok(&alice, request).await).is_empty(), "empty lists and rooms: none");
}
on_both_backends!(extensions_follow_their_lists_and_rooms);
