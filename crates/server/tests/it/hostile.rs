//! The hostile-client table of issue 12: each hole found, replayed as the
//! request sequence a hostile client would send, with the status and
//! errcode it must now get, on both backends. Holes that need a fault or
//! a load to show (a stopped database, a full disk, starved readers, slow
//! connections) have their own tests, named in each row's comment.

use std::future::Future;
use std::pin::Pin;

use chancery_testkit::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, assert_error, call, login};

type Step<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One row: the item, what the client tries, and the sequence.
struct Row {
    item: &'static str,
    tries: &'static str,
    run: for<'a> fn(&'a str) -> Step<'a>,
}

const TABLE: &[Row] = &[
    Row { item: "1", tries: "a login body ruma's deserializer panicked on", run: |base| Box::pin(panicking_login(base)) },
    Row { item: "2", tries: "U+0000 in text other users' requests read", run: |base| Box::pin(nul_text(base)) },
    Row { item: "3", tries: "account data for rooms the user is not in", run: |base| Box::pin(room_account_data(base)) },
    Row { item: "4", tries: "filling the interactive-auth sessions", run: |base| Box::pin(uia_sessions(base)) },
    Row { item: "5", tries: "confirming events history visibility hides", run: |base| Box::pin(hidden_events(base)) },
    Row { item: "7", tries: "floods of events, rooms, invites, receipts, filters", run: |base| Box::pin(floods(base)) },
    Row { item: "8", tries: "more connections from one address than allowed", run: |base| Box::pin(connection_flood(base)) },
    Row { item: "10", tries: "probing for deactivated accounts", run: |base| Box::pin(deactivated_probe(base)) },
    // Item 8's slow heads and bodies, request and drain deadlines, and
    // thousands of idle connections and long-polls: connections::*.
    // Item 6 (starved readers): store_conformance::*::heavy_reads_leave_a_connection_for_small_ones,
    // query_timeouts::*. Item 9 (faults): faults::*. Item 7's long-polls:
    // bad_input::long_polls_per_user_are_bounded; notification pruning:
    // components::notifications_older_than_the_retention_are_deleted.
];

async fn hostile_client_table(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.register_per_address.burst = 1_000;
        c.rate_limits.login_per_address.burst = 1_000;
        let slow = |burst| chancery_service::RateLimit { per_second: 0.001, burst };
        c.rate_limits.uia_per_account = slow(4);
        c.rate_limits.events_per_user = slow(6);
        c.rate_limits.rooms_per_user = slow(3);
        c.rate_limits.invites_per_user = slow(2);
        c.rate_limits.receipts_per_user = slow(3);
        c.limits.max_connections_per_address = CONNECTIONS_PER_ADDRESS;
    })
    .await
    .unwrap();
    for row in TABLE {
        eprintln!("item {}: {}", row.item, row.tries);
        (row.run)(&server.base_url).await;
    }
    server.stop().await.unwrap();
}

on_both_backends!(hostile_client_table);

const CONNECTIONS_PER_ADDRESS: usize = 32;

/// A fresh user of this row (each row draws on its own rate limits).
async fn user(base: &str, row: &str, name: &str) -> User {
    User::new(base, &format!("{name}{row}")).await
}

async fn panicking_login(base: &str) {
    let url = format!("{base}/_matrix/client/v3/login");
    for body in [json!({}), json!({"type": 7}), json!({"type": "m.login.password"})] {
        let got = call(Method::POST, &url, None, Some(body.clone())).await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{body}: {got:?}");
    }
    assert_error(&call(Method::POST, &url, None, Some(json!({}))).await, 400, "M_BAD_JSON");
}

async fn nul_text(base: &str) {
    let alice = user(base, "n", "alice").await;
    let room = alice.create_room(json!({})).await;
    let nul = "bad\u{0}text";
    let displayname =
        alice.call(Method::PUT, &format!("/profile/{}/displayname", alice.id), Some(json!({"displayname": nul}))).await;
    assert_error(&displayname, 400, "M_BAD_JSON");
    let send = alice.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/n1"), Some(json!({"body": nul}))).await;
    assert_error(&send, 400, "M_BAD_JSON");
    let join_rules = json!({"join_rule": nul});
    let state = alice.call(Method::PUT, &format!("/rooms/{room}/state/m.room.join_rules/"), Some(join_rules)).await;
    assert_error(&state, 400, "M_BAD_JSON");
    let account_data =
        alice.call(Method::PUT, &format!("/user/{}/account_data/org.example.x", alice.id), Some(json!({"v": nul}))).await;
    assert_error(&account_data, 400, "M_BAD_JSON");
    // The room and the directory still work for everyone.
    alice.say(&room, "n2", "fine").await;
    let bob = user(base, "n", "bob").await;
    bob.ok(Method::POST, "/user_directory/search", Some(json!({"search_term": "alice"}))).await;
}

async fn room_account_data(base: &str) {
    let alice = user(base, "a", "alice").await;
    let bob = user(base, "a", "bob").await;
    let room = alice.create_room(json!({})).await;
    let outsider =
        bob.call(Method::PUT, &format!("/user/{}/rooms/{room}/account_data/org.example.x", bob.id), Some(json!({}))).await;
    assert_error(&outsider, 403, "M_FORBIDDEN");
    let tag = bob.call(Method::PUT, &format!("/user/{}/rooms/{room}/tags/u.work", bob.id), Some(json!({}))).await;
    assert_error(&tag, 403, "M_FORBIDDEN");
    alice.ok(Method::PUT, &format!("/user/{}/rooms/{room}/account_data/org.example.x", alice.id), Some(json!({}))).await;
}

async fn uia_sessions(base: &str) {
    let mallory = user(base, "u", "mallory").await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let (status, body) = mallory.call(Method::POST, "/delete_devices", Some(json!({"devices": []}))).await;
        assert_eq!(status, 401, "{body}");
        sessions.push(body["session"].clone());
    }
    assert!(sessions.iter().all(|s| *s == sessions[0]), "one session per user and operation: {sessions:?}");
    assert_error(&mallory.call(Method::POST, "/delete_devices", Some(json!({"devices": []}))).await, 429, "M_LIMIT_EXCEEDED");
    // Others still register and change their passwords.
    let other = user(base, "u", "olga").await;
    let (status, body) = other.call(Method::POST, "/account/password", Some(json!({"new_password": "another one 42"}))).await;
    assert_eq!(status, 401, "{body}");
}

async fn hidden_events(base: &str) {
    let alice = user(base, "v", "alice").await;
    let bob = user(base, "v", "bob").await;
    let history = json!({"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}});
    let room = alice.create_room(json!({"preset": "public_chat", "initial_state": [history]})).await;
    let secret = alice.say(&room, "v1", "before bob").await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let missing = "$doesnotexist:localhost";
    for path in [format!("/rooms/{room}/receipt/m.read/{{}}"), format!("/rooms/{room}/report/{{}}")] {
        let hidden = bob.call(Method::POST, &path.replace("{}", &secret), Some(json!({"reason": "x"}))).await;
        let unknown = bob.call(Method::POST, &path.replace("{}", missing), Some(json!({"reason": "x"}))).await;
        assert_error(&hidden, 404, "M_NOT_FOUND");
        assert_eq!(hidden, unknown, "{path}: a hidden event answers like a missing one");
    }
    assert_error(&bob.call(Method::GET, &format!("/rooms/{room}/context/{secret}"), None).await, 404, "M_NOT_FOUND");
    assert_error(&bob.call(Method::GET, &format!("/rooms/{room}/event/{secret}"), None).await, 404, "M_NOT_FOUND");
}

async fn connection_flood(base: &str) {
    use crate::connections::{VERSIONS, answer, connect};
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    let refusal = loop {
        assert!(held.len() <= CONNECTIONS_PER_ADDRESS, "{} connections from one address admitted", held.len());
        let mut stream = connect(base).await;
        stream.write_all(VERSIONS).await.unwrap();
        let (status, _, body) = answer(&mut stream).await.expect("an answer");
        if status != 200 {
            break (status, body);
        }
        held.push(stream);
    };
    assert_eq!((refusal.0, refusal.1["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{}", refusal.1);
    drop(held);
    // Their places come back once the server has seen them close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while call(Method::GET, &format!("{base}/_matrix/client/versions"), None, None).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "closed connections kept their places");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn floods(base: &str) {
    let alice = user(base, "f", "alice").await;
    let bob = user(base, "f", "bob").await;
    let carol = user(base, "f", "carol").await;
    let limited = |got: (StatusCode, Value)| assert_error(&got, 429, "M_LIMIT_EXCEEDED");
    // Rooms: the third is alice's last for a while.
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    alice.create_room(json!({})).await;
    alice.create_room(json!({})).await;
    limited(alice.call(Method::POST, "/createRoom", Some(json!({}))).await);
    // Invites.
    for who in [&bob, &carol] {
        alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": who.id}))).await;
    }
    let dave = user(base, "f", "dave").await;
    limited(alice.call(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": dave.id}))).await);
    // An outsider's sends are refused before the room's lock.
    let outsider = dave.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/d1"), Some(json!({"body": "x"}))).await;
    assert_error(&outsider, 403, "M_FORBIDDEN");
    // Events: alice's room creations sent none through the limiter; six
    // sends, then a wait.
    let mut last = String::new();
    for n in 0..6 {
        last = alice.say(&room, &format!("f{n}"), "flood").await;
    }
    limited(alice.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/f6"), Some(json!({"body": "x"}))).await);
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    bob.say(&room, "b1", "bob is not limited by alice").await;
    // Receipts.
    for _ in 0..3 {
        bob.ok(Method::POST, &format!("/rooms/{room}/receipt/m.read/{last}"), Some(json!({}))).await;
    }
    limited(bob.call(Method::POST, &format!("/rooms/{room}/receipt/m.read/{last}"), Some(json!({}))).await);
    // A filter past 16 KiB inline in /sync.
    let types: Vec<String> = (0..1_000).map(|n| format!("org.example.type.{n:05}")).collect();
    let filter = json!({"room": {"timeline": {"not_types": types}}}).to_string();
    let url = reqwest::Url::parse_with_params(&carol.url("/sync"), &[("filter", filter.as_str()), ("timeout", "0")]).unwrap();
    assert_error(&call(Method::GET, url.as_str(), Some(&carol.token), None).await, 413, "M_TOO_LARGE");
}

async fn deactivated_probe(base: &str) {
    let gone = user(base, "d", "gone").await;
    let (status, challenge) = gone.call(Method::POST, "/account/deactivate", Some(json!({}))).await;
    assert_eq!(status, 401, "{challenge}");
    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": gone.id}, "password": PASSWORD,
                      "session": challenge["session"]});
    gone.ok(Method::POST, "/account/deactivate", Some(json!({"auth": auth}))).await;
    // Its old password, a wrong one, and a name that never existed: the
    // same answer.
    let never = login(base, "neverexisted", PASSWORD).await;
    assert_error(&never, 403, "M_FORBIDDEN");
    assert_eq!(login(base, &gone.id, PASSWORD).await, never);
    assert_eq!(login(base, &gone.id, "wrong password").await, never);
}
