//! Pushers and push delivery, against a push gateway of the test's own
//! (an axum server on 127.0.0.1 that records what it is sent and answers
//! 200, 500 or `rejected` as told): what an `event_id_only` push carries
//! and what it must not, badge counts going up and down, a rejected
//! pushkey, a failing gateway, a restart with pushes undelivered, two
//! nodes, pushers leaving with their device, and bad input.
//!
//! Waits are bounded polls of what the gateway recorded (20 ms apart, at
//! most 30 s), never sleeps for ordering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, assert_error, call, login};

const APP: &str = "org.chancery.test";
const DEADLINE: Duration = Duration::from_secs(30);

/// How the test gateway answers.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Accept,
    /// 500, as a gateway that is down behind its proxy.
    Fail,
    /// 200 with `{"rejected": [this pushkey]}`.
    Reject(String),
}

#[derive(Default)]
struct Recorded {
    /// Bodies the gateway accepted (answered 200 without rejecting).
    accepted: Vec<Value>,
    /// Every request, whatever the answer.
    attempts: usize,
}

struct GatewayState {
    mode: Mutex<Mode>,
    recorded: Mutex<Recorded>,
}

/// A push gateway on 127.0.0.1.
struct Gateway {
    url: String,
    state: Arc<GatewayState>,
    server: tokio::task::JoinHandle<()>,
}

async fn notify(State(state): State<Arc<GatewayState>>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let mode = state.mode.lock().unwrap().clone();
    let mut recorded = state.recorded.lock().unwrap();
    recorded.attempts += 1;
    match mode {
        Mode::Accept => {
            recorded.accepted.push(body);
            (StatusCode::OK, Json(json!({"rejected": []})))
        }
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))),
        Mode::Reject(key) => (StatusCode::OK, Json(json!({"rejected": [key]}))),
    }
}

impl Gateway {
    async fn start() -> Gateway {
        let state = Arc::new(GatewayState { mode: Mutex::new(Mode::Accept), recorded: Mutex::new(Recorded::default()) });
        let app =
            axum::Router::new().route("/_matrix/push/v1/notify", axum::routing::post(notify)).with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Gateway { url, state, server }
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn attempts(&self) -> usize {
        self.state.recorded.lock().unwrap().attempts
    }

    fn accepted(&self) -> Vec<Value> {
        self.state.recorded.lock().unwrap().accepted.clone()
    }

    /// Waits until an accepted push satisfies `found`; returns it.
    async fn wait_for(&self, what: &str, found: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(push) = self.accepted().into_iter().find(|p| found(p)) {
                return push;
            }
            assert!(Instant::now() < deadline, "the gateway never got {what}; it got {:#?}", self.accepted());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the gateway accepted a push of `event_id` to `pushkey`.
    async fn wait_for_event(&self, event_id: &str, pushkey: &str) -> Value {
        self.wait_for(&format!("a push of {event_id} to {pushkey}"), |p| {
            p["notification"]["event_id"] == event_id && p["notification"]["devices"][0]["pushkey"] == pushkey
        })
        .await
    }

    /// Waits until at least `n` requests came, accepted or not.
    async fn wait_for_attempts(&self, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.attempts() < n {
            assert!(Instant::now() < deadline, "the gateway got {} requests, not {n}", self.attempts());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pushes of `event_id` accepted so far.
    fn count_of(&self, event_id: &str) -> usize {
        self.accepted().iter().filter(|p| p["notification"]["event_id"] == event_id).count()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A server whose pushers may use the loopback gateway, retrying fast.
async fn server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.push.allow_http_gateways = true;
        c.push.allow_private_gateway_addresses = true;
        c.push.retry_initial_ms = 100;
        c.push.retry_max_ms = 400;
    })
    .await
    .unwrap()
}

fn pusher_body(url: &str, pushkey: &str, format: Option<&str>) -> Value {
    let mut data = json!({"url": url, "default_payload": {"aps": {"mutable-content": 1}}});
    if let Some(format) = format {
        data["format"] = json!(format);
    }
    json!({
        "kind": "http",
        "app_id": APP,
        "pushkey": pushkey,
        "app_display_name": "Test app",
        "device_display_name": "Test phone",
        "lang": "en",
        "data": data,
    })
}

async fn set_pusher(user: &User, body: Value) {
    user.ok(Method::POST, "/pushers/set", Some(body)).await;
}

async fn pushers_of(user: &User) -> Vec<Value> {
    user.ok(Method::GET, "/pushers", None).await["pushers"].as_array().unwrap().clone()
}

/// A public room `bob` created and `alice` joined.
async fn shared_room(bob: &User, alice: &User) -> String {
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    alice.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    room
}

/// Alice sets an `event_id_only` pusher and a full one; Bob's messages
/// reach the gateway: her event ids, room ids, the badge and her pushkey,
/// and for the `event_id_only` one nothing of the message. The badge
/// counts rooms with unread messages and goes down when she reads; a
/// `rejected` answer removes the pusher.
async fn pushes_reach_the_gateway(backend: Backend) {
    let server = server(backend).await;
    let gateway = Gateway::start().await;
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;
    bob.ok(Method::PUT, &format!("/profile/{}/displayname", bob.id), Some(json!({"displayname": "Bob B."}))).await;
    let room = shared_room(&bob, &alice).await;
    bob.ok(Method::PUT, &format!("/rooms/{room}/state/m.room.name"), Some(json!({"name": "Ops room"}))).await;
    let other_room = shared_room(&bob, &alice).await;

    set_pusher(&alice, pusher_body(&gateway.url, "alice-private-key", Some("event_id_only"))).await;
    set_pusher(&alice, pusher_body(&gateway.url, "alice-full-key", None)).await;
    let listed = pushers_of(&alice).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let private = listed.iter().find(|p| p["pushkey"] == "alice-private-key").unwrap();
    assert_eq!(
        (&private["kind"], &private["app_id"], &private["data"]),
        (
            &json!("http"),
            &json!(APP),
            &json!({"url": gateway.url, "format": "event_id_only", "default_payload": {"aps": {"mutable-content": 1}}})
        )
    );
    assert!(pushers_of(&bob).await.is_empty(), "pushers are per user");

    // One message: the badge is one room.
    let first = bob.say(&room, "m1", "the launch code is 0000").await;
    let push = gateway.wait_for_event(&first, "alice-private-key").await;
    let n = &push["notification"];
    assert_eq!((&n["event_id"], &n["room_id"], &n["counts"]), (&json!(first), &json!(room), &json!({"unread": 1})));
    let device = &n["devices"][0];
    assert_eq!((&device["app_id"], &device["pushkey"]), (&json!(APP), &json!("alice-private-key")));
    assert_eq!(
        device["data"],
        json!({"format": "event_id_only", "default_payload": {"aps": {"mutable-content": 1}}}),
        "the pusher's data without url"
    );
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now_s.abs_diff(device["pushkey_ts"].as_u64().unwrap()) < 3_600, "seconds: {device}");
    assert_eq!(device["tweaks"]["sound"], "default", "the default rules' tweaks");
    for field in ["content", "sender", "type", "room_name", "sender_display_name", "room_alias"] {
        assert!(n.get(field).is_none(), "event_id_only must not carry {field}: {push}");
    }
    assert!(!push.to_string().contains("launch code"), "no content leaves with event_id_only: {push}");

    // The full pusher was told what the spec lists.
    let full = gateway.wait_for_event(&first, "alice-full-key").await;
    let n = &full["notification"];
    assert_eq!((&n["type"], &n["sender"]), (&json!("m.room.message"), &json!(bob.id)));
    assert_eq!(n["content"]["body"], "the launch code is 0000");
    assert_eq!((&n["sender_display_name"], &n["room_name"]), (&json!("Bob B."), &json!("Ops room")));
    assert!(n["devices"][0]["data"].get("url").is_none());

    // A second room with an unread message: the badge says two.
    let second = bob.say(&other_room, "m2", "and another").await;
    let push = gateway.wait_for_event(&second, "alice-private-key").await;
    assert_eq!(push["notification"]["counts"]["unread"], 2);

    // Alice reads the first room: her phones are told the badge is one.
    let pushes_before = gateway.accepted().len();
    alice.ok(Method::POST, &format!("/rooms/{room}/receipt/m.read/{first}"), Some(json!({}))).await;
    let badge = gateway
        .wait_for("a badge update", |p| {
            p["notification"].get("event_id").is_none() && p["notification"]["devices"][0]["pushkey"] == "alice-private-key"
        })
        .await;
    assert_eq!(badge["notification"]["counts"], json!({"unread": 1}));
    assert_eq!(badge["notification"]["prio"], "low");
    assert!(gateway.accepted().len() > pushes_before);
    // Reading the other room clears it: a zero is sent, not left out.
    alice.ok(Method::POST, &format!("/rooms/{other_room}/receipt/m.read/{second}"), Some(json!({}))).await;
    gateway
        .wait_for("a badge of zero", |p| {
            p["notification"].get("event_id").is_none()
                && p["notification"]["devices"][0]["pushkey"] == "alice-private-key"
                && p["notification"]["counts"] == json!({"unread": 0})
        })
        .await;

    // The gateway rejects the private key: that pusher goes, the other stays.
    gateway.set_mode(Mode::Reject("alice-private-key".into()));
    let third = bob.say(&room, "m3", "still there?").await;
    let deadline = Instant::now() + DEADLINE;
    while pushers_of(&alice).await.len() != 1 {
        assert!(Instant::now() < deadline, "the rejected pusher was not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pushers_of(&alice).await[0]["pushkey"], "alice-full-key");
    gateway.set_mode(Mode::Accept);
    // The full pusher's push of the third message was answered with the
    // other key rejected: delivered, so not sent again; the next comes.
    let fourth = bob.say(&room, "m4", "hello?").await;
    gateway.wait_for_event(&fourth, "alice-full-key").await;
    assert_eq!(gateway.count_of(&third), 0, "{:#?}", gateway.accepted());
    assert!(
        gateway.accepted().iter().all(|p| p["notification"]["event_id"] != fourth.as_str()
            || p["notification"]["devices"][0]["pushkey"] == "alice-full-key")
    );
    server.stop().await.unwrap();
}
on_both_backends!(pushes_reach_the_gateway);

/// A gateway answering 500 is retried with backoff; once it answers
/// again the notification arrives, once; other pushers were not held up.
async fn a_failing_gateway_gets_the_push_after_backoff(backend: Backend) {
    let server = server(backend).await;
    let failing = Gateway::start().await;
    let healthy = Gateway::start().await;
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let carol = User::new(base, "carol").await;
    let bob = User::new(base, "bob").await;
    let room = shared_room(&bob, &alice).await;
    carol.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    set_pusher(&alice, pusher_body(&failing.url, "alice-key", Some("event_id_only"))).await;
    set_pusher(&carol, pusher_body(&healthy.url, "carol-key", Some("event_id_only"))).await;

    failing.set_mode(Mode::Fail);
    let message = bob.say(&room, "m1", "are you there").await;
    // Carol's push does not wait for alice's gateway.
    healthy.wait_for_event(&message, "carol-key").await;
    // Tried, then tried again after a backoff, never accepted.
    failing.wait_for_attempts(3).await;
    assert!(failing.accepted().is_empty());

    failing.set_mode(Mode::Accept);
    failing.wait_for_event(&message, "alice-key").await;
    // The next push arrives after it: the first was recorded as delivered
    // and not sent again.
    let next = bob.say(&room, "m2", "good").await;
    failing.wait_for_event(&next, "alice-key").await;
    assert_eq!(failing.count_of(&message), 1, "{:#?}", failing.accepted());
    server.stop().await.unwrap();
}
on_both_backends!(a_failing_gateway_gets_the_push_after_backoff);

/// Messages arrive while the gateway is down; the server stops and starts
/// again on the same database; the gateway is back: the pushes arrive.
async fn undelivered_pushes_survive_a_restart(backend: Backend) {
    let mut server = server(backend).await;
    let gateway = Gateway::start().await;
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = shared_room(&bob, &alice).await;
    let other_room = shared_room(&bob, &alice).await;
    set_pusher(&alice, pusher_body(&gateway.url, "alice-key", Some("event_id_only"))).await;

    gateway.set_mode(Mode::Fail);
    let first = bob.say(&room, "m1", "one").await;
    let second = bob.say(&other_room, "m2", "two").await;
    gateway.wait_for_attempts(2).await;
    assert!(gateway.accepted().is_empty());

    server.restart().await.unwrap();
    gateway.set_mode(Mode::Accept);
    let a = gateway.wait_for_event(&first, "alice-key").await;
    let b = gateway.wait_for_event(&second, "alice-key").await;
    assert_eq!((&a["notification"]["room_id"], &b["notification"]["room_id"]), (&json!(room), &json!(other_room)));
    assert_eq!(b["notification"]["counts"]["unread"], 2);
    let order: Vec<Value> = gateway.accepted().iter().map(|p| p["notification"]["event_id"].clone()).collect();
    assert_eq!(order, [json!(first), json!(second)], "in the order they were sent");
    server.stop().await.unwrap();
}
on_both_backends!(undelivered_pushes_survive_a_restart);

/// Two nodes on one PostgreSQL database, messages sent through both:
/// every push arrives, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_push_once() {
    let first_node = server(Backend::Postgres).await;
    let second_node = first_node.another_node().await.unwrap();
    let gateway = Gateway::start().await;
    let alice = User::new(&first_node.base_url, "alice").await;
    let bob = User::new(&first_node.base_url, "bob").await;
    let bob_elsewhere = User { base: second_node.base_url.clone(), token: bob.token.clone(), id: bob.id.clone() };
    let room = shared_room(&bob, &alice).await;
    set_pusher(&alice, pusher_body(&gateway.url, "alice-key", Some("event_id_only"))).await;
    let mut sent = Vec::new();
    for n in 0..8 {
        let via = if n % 2 == 0 { &bob } else { &bob_elsewhere };
        sent.push(via.say(&room, &format!("m{n}"), &format!("message {n}")).await);
    }
    for event_id in &sent {
        gateway.wait_for_event(event_id, "alice-key").await;
    }
    // Every push of these came before this last one's.
    let last = bob_elsewhere.say(&room, "last", "the end").await;
    gateway.wait_for_event(&last, "alice-key").await;
    for event_id in &sent {
        assert_eq!(gateway.count_of(event_id), 1, "{event_id}: {:#?}", gateway.accepted());
    }
    second_node.stop().await.unwrap();
    first_node.stop().await.unwrap();
}

/// A pusher belongs to the device that set it: deleting the device or
/// logging it out removes the pusher, not the others'.
async fn a_pusher_goes_with_its_device(backend: Backend) {
    let server = server(backend).await;
    let gateway = Gateway::start().await;
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let (status, phone) = login(base, "alice", PASSWORD).await;
    assert_eq!(status, 200, "{phone}");
    let phone_device = phone["device_id"].as_str().unwrap().to_owned();
    let phone = User { base: base.clone(), token: phone["access_token"].as_str().unwrap().into(), id: alice.id.clone() };
    let (status, tablet) = login(base, "alice", PASSWORD).await;
    assert_eq!(status, 200, "{tablet}");
    let tablet = User { base: base.clone(), token: tablet["access_token"].as_str().unwrap().into(), id: alice.id.clone() };
    set_pusher(&phone, pusher_body(&gateway.url, "phone-key", None)).await;
    set_pusher(&tablet, pusher_body(&gateway.url, "tablet-key", None)).await;
    set_pusher(&alice, pusher_body(&gateway.url, "laptop-key", None)).await;
    assert_eq!(pushers_of(&alice).await.len(), 3);

    // The phone's device is deleted (with her password).
    let path = format!("/devices/{phone_device}");
    let (status, challenge) = alice.call(Method::DELETE, &path, Some(json!({}))).await;
    assert_eq!(status, 401, "{challenge}");
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                               "password": PASSWORD, "session": challenge["session"]}});
    alice.ok(Method::DELETE, &path, Some(auth)).await;
    let keys = |pushers: Vec<Value>| pushers.iter().map(|p| p["pushkey"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let mut left = keys(pushers_of(&alice).await);
    left.sort();
    assert_eq!(left, ["laptop-key", "tablet-key"]);

    // The tablet logs out.
    tablet.ok(Method::POST, "/logout", Some(json!({}))).await;
    assert_eq!(keys(pushers_of(&alice).await), ["laptop-key"]);
    server.stop().await.unwrap();
}
on_both_backends!(a_pusher_goes_with_its_device);

/// Bad pusher input is refused with a clear error and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pusher_input_is_refused() {
    // The default policy: https only, no private addresses.
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let set = |body: Value| {
        let alice = &alice;
        async move { alice.call(Method::POST, "/pushers/set", Some(body)).await }
    };
    let good_url = "https://push.example.org/_matrix/push/v1/notify";
    let mut missing_url = pusher_body(good_url, "k", None);
    missing_url["data"].as_object_mut().unwrap().remove("url");
    assert_error(&set(missing_url).await, 400, "M_BAD_JSON");
    for (url, says) in [
        ("not a url", "not a URL"),
        ("https://push.example.org/notify", "path"),
        ("http://push.example.org/_matrix/push/v1/notify", "https"),
        ("https://127.0.0.1/_matrix/push/v1/notify", "private"),
        ("https://[::1]/_matrix/push/v1/notify", "private"),
    ] {
        let got = set(pusher_body(url, "k", None)).await;
        assert_error(&got, 400, "M_INVALID_PARAM");
        assert!(got.1["error"].as_str().unwrap().contains(says), "{url}: {}", got.1);
    }
    let mut huge = pusher_body(good_url, "k", None);
    huge["data"]["blob"] = json!("x".repeat(20_000));
    let got = set(huge).await;
    assert_error(&got, 400, "M_INVALID_PARAM");
    assert!(got.1["error"].as_str().unwrap().contains("data"), "{}", got.1);
    let mut long_key = pusher_body(good_url, &"k".repeat(513), None);
    assert_error(&set(long_key.clone()).await, 400, "M_INVALID_PARAM");
    long_key["pushkey"] = json!("");
    assert_error(&set(long_key).await, 400, "M_INVALID_PARAM");
    let mut email = pusher_body(good_url, "alice@example.org", None);
    email["kind"] = json!("email");
    email["app_id"] = json!("m.email");
    let got = set(email).await;
    assert_error(&got, 400, "M_INVALID_PARAM");
    assert!(got.1["error"].as_str().unwrap().contains("e-mail"), "{}", got.1);
    let mut no_lang = pusher_body(good_url, "k", None);
    no_lang.as_object_mut().unwrap().remove("lang");
    assert_error(&set(no_lang).await, 400, "M_BAD_JSON");
    assert!(pushers_of(&alice).await.is_empty(), "nothing was stored");

    // Deleting one that does not exist is fine; no token is not.
    alice.ok(Method::POST, "/pushers/set", Some(json!({"kind": null, "app_id": APP, "pushkey": "none"}))).await;
    let url = alice.url("/pushers");
    assert_error(&call(Method::GET, &url, None, None).await, 401, "M_MISSING_TOKEN");

    // At most 100 pushers per account.
    for n in 0..100 {
        set(pusher_body(good_url, &format!("key-{n}"), None)).await;
    }
    assert_eq!(pushers_of(&alice).await.len(), 100);
    assert_error(&set(pusher_body(good_url, "one-too-many", None)).await, 403, "M_FORBIDDEN");
    // Updating one of them is still allowed.
    alice.ok(Method::POST, "/pushers/set", Some(pusher_body(good_url, "key-7", Some("event_id_only")))).await;
    server.stop().await.unwrap();
}
