//! Delayed events (MSC4140) over HTTP, as Element Call (matrix-js-sdk) and
//! lk-jwt-service call them: scheduling with `org.matrix.msc4140.delay`,
//! the listing, restart/cancel/send by delay id alone, limits, firing on
//! time, after a restart or a crash, and once across nodes; and through
//! matrix-sdk as Element X's widget driver (Element Call inside Element X)
//! sends it. Time passes for real here (the server's clock is the
//! system's): delays are short and every wait is a bounded poll of what
//! the server answers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chancery_testkit::{Backend, ChildServer, TestServer, test_config};
use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::delayed_events::update_delayed_event::unstable::UpdateAction;
use matrix_sdk::ruma::api::client::delayed_events::{DelayParameters, delayed_state_event, update_delayed_event};
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, assert_error, call};

const BIN: &str = env!("CARGO_BIN_EXE_chancery");

const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";
const PREFIX: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";

/// A room of `owner` where members may send call member state (as
/// Element Call needs), joined by `member`.
async fn call_room(owner: &User, member: &User) -> String {
    let room = owner
        .create_room(json!({
            "preset": "public_chat",
            "power_level_content_override": {"events": {CALL_MEMBER: 0}},
        }))
        .await;
    member.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    room
}

/// Schedules a call member state event at `key` with `delay_ms`.
async fn schedule_state(user: &User, room: &str, key: &str, delay_ms: u64, content: Value) -> (StatusCode, Value) {
    let path = format!("/rooms/{room}/state/{CALL_MEMBER}/{key}?org.matrix.msc4140.delay={delay_ms}");
    user.call(Method::PUT, &path, Some(content)).await
}

async fn schedule_ok(user: &User, room: &str, key: &str, delay_ms: u64, content: Value) -> String {
    let (status, body) = schedule_state(user, room, key, delay_ms, content).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("event_id").is_none(), "{body}");
    let id = body["delay_id"].as_str().expect("a delay id").to_owned();
    assert!(id.len() >= 40, "delay ids are long random secrets: {id}");
    id
}

/// `POST …/delayed_events/{id}/{action}` without an access token.
async fn act(user: &User, delay_id: &str, action: &str) -> (StatusCode, Value) {
    call(Method::POST, &format!("{}{PREFIX}/{delay_id}/{action}", user.base), None, Some(json!({}))).await
}

async fn state_at(user: &User, room: &str, key: &str) -> Option<Value> {
    let (status, body) = user.call(Method::GET, &format!("/rooms/{room}/state/{CALL_MEMBER}/{key}"), None).await;
    match status.as_u16() {
        200 => Some(body),
        404 => None,
        other => panic!("state read answered {other}: {body}"),
    }
}

/// Polls the state at `key` until it holds `content` (at most 15 s).
async fn wait_for_state(user: &User, room: &str, key: &str, content: &Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if state_at(user, room, key).await.as_ref() == Some(content) {
            return;
        }
        assert!(Instant::now() < deadline, "the delayed event at {key} never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn listed(user: &User) -> Vec<Value> {
    let (status, body) = call(Method::GET, &format!("{}{PREFIX}", user.base), Some(&user.token), None).await;
    assert_eq!(status, 200, "{body}");
    body["delayed_events"].as_array().expect("a list").clone()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn fires_on_time_and_reaches_sync(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    let versions = call(Method::GET, &format!("{}/_matrix/client/versions", server.base_url), None, None).await.1;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true, "{versions}");

    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let key = format!("_{}_DEV_m.call", bob.id);
    let leave = json!({});
    schedule_ok(&bob, &room, &key, 300, leave.clone()).await;
    assert_eq!(state_at(&alice, &room, &key).await, None, "not sent before its time");
    wait_for_state(&alice, &room, &key, &leave).await;
    // Sent as bob, seen by /sync like any state event; no longer listed.
    let sync = alice.sync(&format!("since={since}&timeout=0")).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let fired = timeline.iter().find(|e| e["type"] == CALL_MEMBER).expect("the fired event in /sync");
    assert_eq!((&fired["sender"], &fired["state_key"]), (&json!(bob.id), &json!(key)));
    assert!(listed(&bob).await.is_empty());
    server.stop().await.unwrap();
}
on_both_backends!(fires_on_time_and_reaches_sync);

async fn restart_postpones_cancel_prevents_send_fires_now(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;

    // Send: fires now, whatever its delay.
    let now_id = schedule_ok(&bob, &room, "now", 3_600_000, json!({"n": 1})).await;
    assert_eq!(act(&bob, &now_id, "send").await.0, 200);
    assert_eq!(state_at(&alice, &room, "now").await, Some(json!({"n": 1})));
    assert_error(&act(&bob, &now_id, "send").await, 404, "M_NOT_FOUND");

    // Restarted every 300 ms past its first due time, it has not fired;
    // left alone, it fires. Cancelled at the same time as a twin that
    // fires, it never does.
    let started = Instant::now();
    let kept = schedule_ok(&bob, &room, "kept", 1_500, json!({"kept": true})).await;
    let cancelled = schedule_ok(&bob, &room, "cancelled", 1_500, json!({"cancelled": true})).await;
    let twin = schedule_ok(&bob, &room, "twin", 1_500, json!({"twin": true})).await;
    assert_eq!(act(&bob, &cancelled, "cancel").await.0, 200);
    assert_error(&act(&bob, &cancelled, "cancel").await, 404, "M_NOT_FOUND");
    let mut restarts = 0;
    while started.elapsed() < Duration::from_millis(2_500) {
        let (status, body) = act(&bob, &kept, "restart").await;
        assert_eq!(status, 200, "{body}");
        restarts += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(restarts >= 5);
    wait_for_state(&alice, &room, "twin", &json!({"twin": true})).await;
    // One more restart: it is due 1.5 s from here, long past its first
    // due time (the twin's), so nothing can have sent it yet.
    assert_eq!(act(&bob, &kept, "restart").await.0, 200);
    assert_eq!(state_at(&alice, &room, "kept").await, None, "restarted past its first due time, it has not fired");
    let pending = listed(&bob).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["delay_id"], json!(kept));
    wait_for_state(&alice, &room, "kept", &json!({"kept": true})).await;
    assert_eq!(state_at(&alice, &room, "cancelled").await, None);
    assert_error(&act(&bob, &twin, "restart").await, 404, "M_NOT_FOUND");
    server.stop().await.unwrap();
}
on_both_backends!(restart_postpones_cancel_prevents_send_fires_now);

async fn management_needs_only_the_delay_id(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    let id = schedule_ok(&bob, &room, "k", 60_000, json!({})).await;
    // The newer path form and matrix-js-sdk's `{"action": ...}` body, both
    // without a token (lk-jwt-service has none).
    assert_eq!(act(&bob, &id, "restart").await.0, 200);
    let by_body = format!("{}{PREFIX}/{id}", server.base_url);
    assert_eq!(call(Method::POST, &by_body, None, Some(json!({"action": "restart"}))).await.0, 200);
    assert_eq!(call(Method::POST, &by_body, Some(&bob.token), Some(json!({"action": "restart"}))).await.0, 200);
    assert_error(&call(Method::POST, &by_body, None, Some(json!({"action": "explode"}))).await, 400, "M_INVALID_PARAM");
    assert_error(&call(Method::POST, &by_body, None, Some(json!({}))).await, 400, "M_MISSING_PARAM");
    // Wrong ids are 404 M_NOT_FOUND in every form.
    let wrong = format!("{id}x");
    for action in ["restart", "cancel", "send"] {
        assert_error(&act(&bob, &wrong, action).await, 404, "M_NOT_FOUND");
        let url = format!("{}{PREFIX}/{wrong}", server.base_url);
        assert_error(&call(Method::POST, &url, None, Some(json!({"action": action}))).await, 404, "M_NOT_FOUND");
    }
    assert_error(&act(&bob, &id, "explode").await, 404, "M_UNRECOGNIZED");
    // The listing is the user's own, and needs a token.
    assert!(listed(&alice).await.is_empty());
    assert_error(&call(Method::GET, &format!("{}{PREFIX}", server.base_url), None, None).await, 401, "M_MISSING_TOKEN");
    server.stop().await.unwrap();
}
on_both_backends!(management_needs_only_the_delay_id);

async fn listing_shows_pending_events_and_their_delay(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    let before = now_ms();
    let late = schedule_ok(&bob, &room, "late", 600_000, json!({"which": "late"})).await;
    let path = format!("/rooms/{room}/send/m.room.message/txn1?org.matrix.msc4140.delay=300000");
    let message = json!({"msgtype": "m.text", "body": "later"});
    let soon = bob.ok(Method::PUT, &path, Some(message.clone())).await["delay_id"].as_str().unwrap().to_owned();
    // A retried send (same transaction id) is the same delayed event.
    assert_eq!(bob.ok(Method::PUT, &path, Some(message.clone())).await["delay_id"], json!(soon));
    let after = now_ms();

    let pending = listed(&bob).await;
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(pending[0]["delay_id"], json!(soon), "soonest first");
    assert_eq!(pending[0]["type"], "m.room.message");
    assert!(pending[0].get("state_key").is_none());
    assert_eq!(pending[0]["content"], message);
    assert_eq!(pending[0]["delay"], 300_000);
    assert_eq!(pending[1]["delay_id"], json!(late));
    assert_eq!(
        (&pending[1]["room_id"], &pending[1]["type"], &pending[1]["state_key"], &pending[1]["delay"]),
        (&json!(room), &json!(CALL_MEMBER), &json!("late"), &json!(600_000))
    );
    for p in &pending {
        let since = p["running_since"].as_u64().unwrap();
        assert!((before..=after).contains(&since), "running_since {since} not within {before}..{after}");
    }
    // A restart moves running_since on.
    let mark = now_ms();
    assert_eq!(act(&bob, &late, "restart").await.0, 200);
    let restarted = listed(&bob).await.into_iter().find(|p| p["delay_id"] == json!(late)).unwrap();
    assert!(restarted["running_since"].as_u64().unwrap() >= mark);
    server.stop().await.unwrap();
}
on_both_backends!(listing_shows_pending_events_and_their_delay);

async fn delays_and_counts_are_bounded(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.delayed_events.max_delay_ms = 60_000;
        c.delayed_events.max_per_user = 3;
    })
    .await
    .unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;

    let too_long = schedule_state(&bob, &room, "k", 60_001, json!({})).await;
    // As matrix-js-sdk's MatrixRTC membership manager recognises it (it
    // then schedules its leave with the server's maximum).
    assert_error(&too_long, 400, "M_UNKNOWN");
    assert_eq!(too_long.1["org.matrix.msc4140.errcode"], "M_MAX_DELAY_EXCEEDED");
    assert_eq!(too_long.1["org.matrix.msc4140.max_delay"], 60_000);
    assert_eq!(too_long.1["max_delay"], 60_000);
    assert_error(&schedule_state(&bob, &room, "k", 0, json!({})).await, 400, "M_INVALID_PARAM");
    let path = format!("/rooms/{room}/state/{CALL_MEMBER}/k?org.matrix.msc4140.delay=soon");
    assert_error(&bob.call(Method::PUT, &path, Some(json!({}))).await, 400, "M_INVALID_PARAM");

    let first = schedule_ok(&bob, &room, "a", 30_000, json!({})).await;
    schedule_ok(&bob, &room, "b", 60_000, json!({})).await;
    schedule_ok(&bob, &room, "c", 60_000, json!({})).await;
    let url = bob.url(&format!("/rooms/{room}/state/{CALL_MEMBER}/d?org.matrix.msc4140.delay=1000"));
    let refused = crate::common::request(Method::PUT, &url, Some(&bob.token), Some(json!({}))).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    // Until the earliest is due (about 30 s).
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((25..=30).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(refused.json::<Value>().await.unwrap()["errcode"], "M_LIMIT_EXCEEDED");
    // Each user has their own count; a cancel frees a place.
    schedule_ok(&alice, &room, "alice", 1_000, json!({})).await;
    assert_eq!(act(&bob, &first, "cancel").await.0, 200);
    schedule_ok(&bob, &room, "d", 1_000, json!({})).await;

    // Not joined, or without the power: refused when scheduled.
    let carol = User::new(&server.base_url, "carol").await;
    assert_error(&schedule_state(&carol, &room, "k", 1_000, json!({})).await, 403, "M_FORBIDDEN");
    let path = format!("/rooms/{room}/state/m.room.name/?org.matrix.msc4140.delay=1000");
    assert_error(&bob.call(Method::PUT, &path, Some(json!({"name": "x"}))).await, 403, "M_FORBIDDEN");
    server.stop().await.unwrap();
}
on_both_backends!(delays_and_counts_are_bounded);

async fn many_restarts_are_never_rate_limited(backend: Backend) {
    // Rate limits on, bob's events at 6 in a burst and hardly refilling.
    let server = TestServer::start_with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.events_per_user = chancery_service::RateLimit { per_second: 0.001, burst: 6 };
    })
    .await
    .unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    // Scheduling counts as sending one event.
    let id = schedule_ok(&bob, &room, "k", 60_000, json!({})).await;
    for n in 0..200 {
        let (status, body) = act(&bob, &id, "restart").await;
        assert_eq!(status, 200, "restart {n}: {body}");
    }
    let by_body = format!("{}{PREFIX}/{id}", server.base_url);
    for n in 0..50 {
        let (status, body) = call(Method::POST, &by_body, Some(&bob.token), Some(json!({"action": "restart"}))).await;
        assert_eq!(status, 200, "restart {n}: {body}");
    }
    // Nor did they use up bob's events: five more sends, then the limit.
    for n in 0..5 {
        bob.say(&room, &format!("after-{n}"), "still here").await;
    }
    let (status, body) =
        bob.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/over"), Some(json!({"body": "x"}))).await;
    assert_eq!(status, 429, "the event limiter is on: {body}");
    server.stop().await.unwrap();
}
on_both_backends!(many_restarts_are_never_rate_limited);

async fn pending_events_survive_a_restart(backend: Backend) {
    let mut server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    schedule_ok(&bob, &room, "k", 4_000, json!({"after": "restart"})).await;
    server.restart().await.unwrap();
    let (alice, bob) = (User { base: server.base_url.clone(), ..alice }, User { base: server.base_url.clone(), ..bob });
    assert_eq!(listed(&bob).await.len(), 1, "still scheduled after the restart");
    wait_for_state(&alice, &room, "k", &json!({"after": "restart"})).await;
    server.stop().await.unwrap();
}
on_both_backends!(pending_events_survive_a_restart);

async fn what_can_no_longer_be_sent_is_dropped(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    // Another user's state at the same key replaces bob's pending one.
    let replaced = schedule_ok(&bob, &room, "shared", 60_000, json!({"by": "bob"})).await;
    let own = schedule_ok(&bob, &room, "own", 60_000, json!({"by": "bob"})).await;
    alice.ok(Method::PUT, &format!("/rooms/{room}/state/{CALL_MEMBER}/shared"), Some(json!({"by": "alice"}))).await;
    assert_error(&act(&bob, &replaced, "send").await, 404, "M_NOT_FOUND");
    // Once bob left, sending is refused (and the event stays scheduled);
    // when it comes due it is dropped.
    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    assert_error(&act(&bob, &own, "send").await, 403, "M_FORBIDDEN");
    assert_eq!(listed(&bob).await.len(), 1);
    let due_soon = {
        let (status, _) = act(&bob, &own, "cancel").await;
        assert_eq!(status, 200);
        // Scheduled while joined, fired after leaving.
        bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
        let id = schedule_ok(&bob, &room, "own", 300, json!({"by": "bob"})).await;
        bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
        id
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !listed(&bob).await.is_empty() {
        assert!(Instant::now() < deadline, "the unsendable event {due_soon} was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state_at(&alice, &room, "own").await, None);
    assert_eq!(state_at(&alice, &room, "shared").await, Some(json!({"by": "alice"})));
    server.stop().await.unwrap();
}
on_both_backends!(what_can_no_longer_be_sent_is_dropped);

/// State set by another path than `/state` (here a room upgrade, which
/// sends the old room's tombstone and power levels as the upgrader)
/// cancels other users' delayed state at the same key too; theirs at other
/// keys stay.
async fn state_set_by_any_path_cancels_other_users_delayed_state(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "power_level_content_override": {"users": {&alice.id: 100, &bob.id: 100}, "events": {CALL_MEMBER: 0}},
        }))
        .await;
    bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    let path = format!("/rooms/{room}/state/m.room.tombstone/?org.matrix.msc4140.delay=60000");
    let (status, body) = bob.call(Method::PUT, &path, Some(json!({"body": "bob's", "replacement_room": "!elsewhere:x"}))).await;
    assert_eq!(status, 200, "{body}");
    let tombstone = body["delay_id"].as_str().unwrap().to_owned();
    let kept = schedule_ok(&bob, &room, "k", 60_000, json!({"by": "bob"})).await;
    assert_eq!(listed(&bob).await.len(), 2);

    alice.ok(Method::POST, &format!("/rooms/{room}/upgrade"), Some(json!({"new_version": "11"}))).await;
    let left: Vec<Value> = listed(&bob).await.into_iter().map(|e| e["delay_id"].clone()).collect();
    assert_eq!(left, [json!(kept)]);
    assert_error(&act(&bob, &tombstone, "send").await, 404, "M_NOT_FOUND");
    server.stop().await.unwrap();
}
on_both_backends!(state_set_by_any_path_cancels_other_users_delayed_state);

async fn switched_off(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.delayed_events.enabled = false).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    let versions = call(Method::GET, &format!("{}/_matrix/client/versions", server.base_url), None, None).await.1;
    assert!(versions["unstable_features"].get("org.matrix.msc4140").is_none(), "{versions}");
    assert_error(&schedule_state(&bob, &room, "k", 1_000, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(
        &call(Method::GET, &format!("{}{PREFIX}", server.base_url), Some(&bob.token), None).await,
        404,
        "M_UNRECOGNIZED",
    );
    assert_error(&act(&bob, "anything", "restart").await, 404, "M_UNRECOGNIZED");
    server.stop().await.unwrap();
}
on_both_backends!(switched_off);

/// Element Call inside Element X: matrix-sdk's widget driver sends the
/// delayed leave and its restarts as these ruma requests (the `delay`
/// query parameter on `/state`, `{"action": ...}` with a token); another
/// matrix-sdk client sees the leave arrive through /sync once the
/// restarts stop.
async fn sdk_delayed_leave_as_element_x_sends_it(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
    let (alice_sdk, bob_sdk) = (sdk_login(&server.base_url, "alice").await, sdk_login(&server.base_url, "bob").await);
    let key = format!("_{}_SDKDEVICE_m.call", bob.id);
    let schedule = |key: &str, delay_ms: u64, content: Value| {
        let body = Raw::from_json(serde_json::value::to_raw_value(&content).unwrap());
        let delay = DelayParameters::Timeout { timeout: Duration::from_millis(delay_ms) };
        delayed_state_event::unstable::Request::new_raw(room_id.clone(), key.to_owned(), CALL_MEMBER.into(), delay, body)
    };
    let update = |id: &str, action: UpdateAction| update_delayed_event::unstable::Request::new(id.to_owned(), action);

    let started = Instant::now();
    let leave = bob_sdk.send(schedule(&key, 1_500, json!({}))).await.unwrap().delay_id;
    let cancelled = bob_sdk.send(schedule("cancelled", 500, json!({"cancelled": true}))).await.unwrap().delay_id;
    let sent = bob_sdk.send(schedule("sent", 3_600_000, json!({"sent": true}))).await.unwrap().delay_id;
    bob_sdk.send(update(&cancelled, UpdateAction::Cancel)).await.unwrap();
    bob_sdk.send(update(&sent, UpdateAction::Send)).await.unwrap();
    assert_eq!(state_at(&alice, &room, "sent").await, Some(json!({"sent": true})));
    let gone = bob_sdk.send(update(&sent, UpdateAction::Send)).await.unwrap_err();
    assert_eq!(gone.as_client_api_error().map(|e| e.status_code.as_u16()), Some(404), "{gone}");
    // The heartbeat: past the first due time, it has not fired.
    while started.elapsed() < Duration::from_millis(2_000) {
        bob_sdk.send(update(&leave, UpdateAction::Restart)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    bob_sdk.send(update(&leave, UpdateAction::Restart)).await.unwrap();
    assert_eq!(state_at(&alice, &room, &key).await, None, "restarted, it has not fired");

    // The client vanishes: alice's /sync brings the leave, sent as bob.
    let alice_room = sdk_room(&alice_sdk, &room_id).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let fired = loop {
        alice_sdk.sync_once(SyncSettings::default().timeout(Duration::from_millis(500))).await.unwrap();
        if let Some(raw) = alice_room.get_state_event(StateEventType::from(CALL_MEMBER), &key).await.unwrap() {
            break raw;
        }
        assert!(Instant::now() < deadline, "the delayed leave never reached alice's sync");
    };
    let fired: Value = match fired {
        matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Sync(raw) => {
            serde_json::from_str(raw.json().get()).unwrap()
        }
        other => panic!("a stripped state event in a joined room: {other:?}"),
    };
    assert_eq!((&fired["sender"], &fired["content"]), (&json!(bob.id), &json!({})));
    assert_eq!(state_at(&alice, &room, "cancelled").await, None, "cancelled, it never fired");
    server.stop().await.unwrap();
}
on_both_backends!(sdk_delayed_leave_as_element_x_sends_it);

async fn sdk_login(base: &str, name: &str) -> Client {
    let client = Client::builder().homeserver_url(base).build().await.unwrap();
    client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
    client
}

/// The room as `client` knows it after a first sync.
async fn sdk_room(client: &Client, room_id: &RoomId) -> matrix_sdk::Room {
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.unwrap();
    client.get_room(room_id).expect("a joined room after a sync")
}

/// The server is killed (SIGKILL) with two events pending; one comes due
/// while it is down. Started again on the same data, it sends that one at
/// once, not a whole idle period later, and keeps the other scheduled as
/// it was.
async fn overdue_events_fire_at_once_after_a_crash(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(backend, dir.path()).await.unwrap();
    let mut server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let (alice, bob) = (User::new(&server.base_url, "alice").await, User::new(&server.base_url, "bob").await);
    let room = call_room(&alice, &bob).await;
    let overdue_at = now_ms() + 1_000;
    schedule_ok(&bob, &room, "overdue", 1_000, json!({"after": "crash"})).await;
    let pending = schedule_ok(&bob, &room, "pending", 600_000, json!({})).await;
    let running_since = listed(&bob).await.iter().find(|p| p["delay_id"] == json!(pending)).unwrap()["running_since"].clone();
    server.kill().await.unwrap();
    // Nothing to poll while it is down: wait (bounded) for the due time to
    // pass on the wall clock the server reads.
    while now_ms() <= overdue_at + 200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let started = Instant::now();
    let (alice, bob) = (User { base: server.base_url.clone(), ..alice }, User { base: server.base_url.clone(), ..bob });
    wait_for_state(&alice, &room, "overdue", &json!({"after": "crash"})).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(decide_max_idle_ms() / 3), "an overdue event waited {waited:?} after the start");
    let left = listed(&bob).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((&left[0]["delay_id"], &left[0]["running_since"]), (&json!(pending), &running_since));
    server.terminate().await.unwrap();
}
on_both_backends!(overdue_events_fire_at_once_after_a_crash);

/// How long the firing task sleeps at most: an event that fired well
/// within it was not found by a late wake-up.
fn decide_max_idle_ms() -> u64 {
    chancery_service::delayed_events::decide::MAX_IDLE_MS
}

/// Two nodes on one PostgreSQL database, events scheduled on both and due
/// together: both firing tasks wake and race for them, and each is sent
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_fires_once_across_nodes() {
    let first = TestServer::start(Backend::Postgres).await.unwrap();
    let second = first.another_node().await.unwrap();
    let alice = User::new(&first.base_url, "alice").await;
    let bob_on_first = User::new(&first.base_url, "bob").await;
    let bob_on_second = User { base: second.base_url.clone(), token: bob_on_first.token.clone(), id: bob_on_first.id.clone() };
    let room = call_room(&alice, &bob_on_first).await;
    const COUNT: usize = 24;
    let due = now_ms() + 1_500;
    for n in 0..COUNT {
        let bob = if n % 2 == 0 { &bob_on_first } else { &bob_on_second };
        // All due at the same instant, whichever node took them.
        let delay = due.saturating_sub(now_ms()).max(1);
        let path = format!("/rooms/{room}/send/m.room.message/d{n}?org.matrix.msc4140.delay={delay}");
        bob.ok(Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": format!("delayed {n}")}))).await;
    }
    // Claimed events (being sent) are no longer listed: wait for the
    // room to hold them all, then for the listing to be empty.
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let messages = alice.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=100"), None).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for event in messages["chunk"].as_array().unwrap() {
            if event["type"] == "m.room.message" {
                *seen.entry(event["content"]["body"].as_str().unwrap().to_owned()).or_default() += 1;
            }
        }
        if seen.len() == COUNT {
            break seen;
        }
        assert!(Instant::now() < deadline, "delayed events were never all sent: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(seen.values().all(|&n| n == 1), "sent more than once: {seen:?}");
    assert!((0..COUNT).all(|n| seen.contains_key(&format!("delayed {n}"))), "{seen:?}");
    assert!(listed(&bob_on_first).await.is_empty());
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}
