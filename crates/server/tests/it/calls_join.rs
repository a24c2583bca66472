//! Element Call on Chancery alone (issue 15): the built-in SFU enabled and
//! nothing else configured serves the token service and MSC4143 discovery
//! pointing at itself, with tokens the SFU accepts; and
//! `POST …/delegate_delayed_leave` keeps a member's delayed leave alive
//! while its participant is on the SFU and sends it the moment the
//! participant disconnects.

use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{User, assert_error, call, register};

const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";
const DELAYED: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";
const DEADLINE: Duration = Duration::from_secs(10);

/// A server with `[sfu] enabled = true` and nothing else about calls: no
/// `[calls]`, no SFU key or secret.
async fn sfu_alone(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |config| {
        config.sfu.enabled = true;
        config.sfu.udp_listen = "127.0.0.1:0".parse().unwrap();
    })
    .await
    .unwrap()
}

async fn openid_token(user: &User) -> Value {
    user.ok(Method::POST, &format!("/user/{}/openid/request_token", user.id), Some(json!({}))).await
}

fn service(server: &TestServer, endpoint: &str) -> String {
    format!("{}/livekit/jwt/{endpoint}", server.base_url)
}

async fn validate(server: &TestServer, jwt: &str) -> u16 {
    let url = format!("{}/_chancery/livekit/rtc/validate?access_token={jwt}", server.base_url);
    reqwest::get(url).await.unwrap().status().as_u16()
}

async fn the_builtin_sfu_alone_serves_calls(backend: Backend) {
    let server = sfu_alone(backend).await;
    let base = &server.base_url;
    let transport = json!({"type": "livekit", "livekit_service_url": server.config.livekit_service_url()});
    assert!(server.config.livekit_service_url().starts_with(&server.config.public_baseurl()));

    // Discovery points at this server, in both forms.
    let (_, well_known) = call(Method::GET, &format!("{base}/.well-known/matrix/client"), None, None).await;
    assert_eq!(well_known["org.matrix.msc4143.rtc_foci"], json!([transport]), "{well_known}");
    let (user_id, token, device_id) = register(base, "alice").await;
    let alice = User { base: base.clone(), token, id: user_id.clone() };
    let transports = format!("{base}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports");
    let (status, body) = call(Method::GET, &transports, Some(&alice.token), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"rtc_transports": [transport]})));

    // The token service hands out the built-in SFU's URL and tokens it
    // accepts, signed with the secret generated at startup.
    let room_id = alice.create_room(json!({})).await;
    let openid = openid_token(&alice).await;
    let legacy = json!({"room": room_id, "openid_token": openid, "device_id": device_id});
    let (status, answer) = call(Method::POST, &service(&server, "sfu/get"), None, Some(legacy)).await;
    assert_eq!(status, 200, "{answer}");
    let expected_url = server.config.public_baseurl().replacen("http://", "ws://", 1) + "/_chancery/livekit";
    assert_eq!(answer["url"], expected_url);
    assert_eq!(validate(&server, answer["jwt"].as_str().unwrap()).await, 200);
    let member = json!({"id": "m1", "claimed_user_id": user_id, "claimed_device_id": device_id});
    let body = json!({"room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid, "member": member});
    let (status, answer) = call(Method::POST, &service(&server, "get_token"), None, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(validate(&server, answer["jwt"].as_str().unwrap()).await, 200);
    // A token of another secret is still refused.
    assert_eq!(validate(&server, "e30.e30.AAAA").await, 401);
    server.stop().await.unwrap();
}

on_both_backends!(the_builtin_sfu_alone_serves_calls);

/// A call member as Element Call is one: its membership state event, a
/// delayed leave (`{}` at the same key), an SFU token.
struct Member {
    user: User,
    room_id: String,
    key: String,
    delay_id: String,
    openid: Value,
    member: Value,
    jwt: String,
}

impl Member {
    async fn join_call(server: &TestServer, name: &str, delay_ms: u64) -> Member {
        let base = &server.base_url;
        let (user_id, token, device_id) = register(base, name).await;
        let user = User { base: base.clone(), token, id: user_id.clone() };
        let room_id = user.create_room(json!({})).await;
        let key = format!("_{user_id}_{device_id}_m.call");
        let membership = json!({"application": "m.call", "call_id": "", "device_id": device_id, "scope": "m.room"});
        user.ok(Method::PUT, &format!("/rooms/{room_id}/state/{CALL_MEMBER}/{key}"), Some(membership)).await;
        let path = format!("/rooms/{room_id}/state/{CALL_MEMBER}/{key}?org.matrix.msc4140.delay={delay_ms}");
        let delay_id = user.ok(Method::PUT, &path, Some(json!({}))).await["delay_id"].as_str().unwrap().to_owned();
        let openid = openid_token(&user).await;
        let member = json!({"id": "member-1", "claimed_user_id": user_id, "claimed_device_id": device_id});
        let body = json!({"room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid, "member": member});
        let (status, answer) = call(Method::POST, &service(server, "get_token"), None, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        let jwt = answer["jwt"].as_str().unwrap().to_owned();
        Member { user, room_id, key, delay_id, openid, member, jwt }
    }

    fn delegation(&self, delay_ms: u64) -> Value {
        json!({
            "room_id": self.room_id, "slot_id": "m.call#ROOM", "openid_token": self.openid, "member": self.member,
            "delay_id": self.delay_id, "delay_timeout": delay_ms, "delay_cs_api_url": self.user.base,
        })
    }

    async fn membership(&self) -> Value {
        self.user.ok(Method::GET, &format!("/rooms/{}/state/{CALL_MEMBER}/{}", self.room_id, self.key), None).await
    }

    /// When the delayed leave's countdown last (re)started.
    async fn running_since(&self) -> Option<u64> {
        let (status, body) = call(Method::GET, &format!("{}{DELAYED}", self.user.base), Some(&self.user.token), None).await;
        assert_eq!(status, 200, "{body}");
        body["delayed_events"].as_array().unwrap().iter().find(|e| e["delay_id"] == self.delay_id.as_str())?["running_since"]
            .as_u64()
    }

    /// Polls the membership until the delayed leave (`{}`) replaced it.
    async fn wait_for_leave(&self, deadline: Instant) {
        while self.membership().await != json!({}) {
            assert!(Instant::now() < deadline, "the delegated leave was not sent in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

type Signal = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Joins the SFU over its signal WebSocket, as livekit-client does, and
/// waits for the join response.
async fn connect(server: &TestServer, jwt: &str) -> Signal {
    let url = format!("{}/_chancery/livekit/rtc?access_token={jwt}", server.base_url.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the SFU admits the participant");
    let first = tokio::time::timeout(DEADLINE, socket.next()).await.expect("a join response in time");
    assert!(matches!(first, Some(Ok(Message::Binary(_)))), "{first:?}");
    socket
}

async fn delegation_is_checked_like_lk_jwt_service(backend: Backend) {
    let server = sfu_alone(backend).await;
    let alice = Member::join_call(&server, "alice", 60_000).await;
    let url = service(&server, "delegate_delayed_leave");
    let (status, body) = call(Method::POST, &url, None, Some(alice.delegation(60_000))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));

    let mut bad = alice.delegation(60_000);
    bad["openid_token"]["access_token"] = json!("not-a-token");
    assert_error(&call(Method::POST, &url, None, Some(bad)).await, 401, "M_UNAUTHORIZED");
    let mut other_user = alice.delegation(60_000);
    other_user["member"]["claimed_user_id"] = json!("@mallory:localhost");
    assert_error(&call(Method::POST, &url, None, Some(other_user)).await, 401, "M_UNAUTHORIZED");
    let mut no_delay = alice.delegation(60_000);
    no_delay["delay_timeout"] = json!(0);
    assert_error(&call(Method::POST, &url, None, Some(no_delay)).await, 400, "M_BAD_JSON");
    let mut no_room = alice.delegation(60_000);
    no_room["room_id"] = json!("");
    assert_error(&call(Method::POST, &url, None, Some(no_room)).await, 400, "M_BAD_JSON");
    let mut unknown_field = alice.delegation(60_000);
    unknown_field["extra"] = json!(1);
    assert_error(&call(Method::POST, &url, None, Some(unknown_field)).await, 400, "M_NOT_JSON");
    server.stop().await.unwrap();

    // An external LiveKit: this server never sees the participant, so it
    // does not take the delegation (lk-jwt-service's refusal).
    let server = TestServer::start_with(backend, |config| {
        config.calls = Some(chancery_server::config::CallsSection {
            livekit_url: "wss://sfu.example.org".into(),
            livekit_api_key: "devkey".into(),
            livekit_api_secret: "a secret of at least thirty-two characters".into(),
            room_create_servers: None,
        });
    })
    .await
    .unwrap();
    let bob = Member::join_call(&server, "bob", 60_000).await;
    let url = service(&server, "delegate_delayed_leave");
    assert_error(&call(Method::POST, &url, None, Some(bob.delegation(60_000))).await, 403, "M_FORBIDDEN");
    server.stop().await.unwrap();

    // No token service: no route.
    let server = TestServer::start(backend).await.unwrap();
    let (status, _) = call(Method::POST, &service(&server, "delegate_delayed_leave"), None, Some(json!({}))).await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

on_both_backends!(delegation_is_checked_like_lk_jwt_service);

async fn a_disconnect_sends_the_delegated_leave_at_once(backend: Backend) {
    let server = sfu_alone(backend).await;
    let alice = Member::join_call(&server, "alice", 60_000).await;
    let scheduled_since = alice.running_since().await.expect("the leave is scheduled");
    let signal = connect(&server, &alice.jwt).await;
    let (status, body) =
        call(Method::POST, &service(&server, "delegate_delayed_leave"), None, Some(alice.delegation(60_000))).await;
    assert_eq!(status, 200, "{body}");

    // Connected: the leave is restarted (its countdown starts again).
    let deadline = Instant::now() + DEADLINE;
    while alice.running_since().await.expect("still scheduled") <= scheduled_since {
        assert!(Instant::now() < deadline, "the delegated leave was never restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(alice.membership().await, json!({}), "still in the call");

    // The participant vanishes: its leave is in the room well before its
    // 60 s delay.
    drop(signal);
    alice.wait_for_leave(Instant::now() + DEADLINE).await;
    assert_eq!(alice.running_since().await, None, "sent, so no longer scheduled");
    server.stop().await.unwrap();
}

on_both_backends!(a_disconnect_sends_the_delegated_leave_at_once);

async fn a_connected_participant_outlives_its_delay(backend: Backend) {
    let server = sfu_alone(backend).await;
    let delay_ms = 1_500;
    let alice = Member::join_call(&server, "alice", delay_ms).await;
    let scheduled = Instant::now();
    // Delegated before connecting, as a client may: kept waiting, then
    // alive once the participant is on the SFU.
    let (status, body) =
        call(Method::POST, &service(&server, "delegate_delayed_leave"), None, Some(alice.delegation(delay_ms))).await;
    assert_eq!(status, 200, "{body}");
    let mut signal = connect(&server, &alice.jwt).await;

    // Restarts keep coming while it stays, past twice its own delay.
    let mut last = alice.running_since().await.expect("scheduled");
    let mut restarts = 0;
    let deadline = Instant::now() + DEADLINE;
    while restarts < 3 || scheduled.elapsed() < Duration::from_millis(2 * delay_ms) {
        assert!(Instant::now() < deadline, "only {restarts} restarts");
        let now = alice.running_since().await.expect("kept scheduled while connected");
        if now > last {
            (last, restarts) = (now, restarts + 1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(alice.membership().await, json!({}), "the leave did not fire while connected");

    // A clean close is a departure too.
    signal.send(Message::Close(None)).await.unwrap();
    alice.wait_for_leave(Instant::now() + DEADLINE).await;
    server.stop().await.unwrap();
}

on_both_backends!(a_connected_participant_outlives_its_delay);
