//! Knocking, space hierarchies and `timestamp_to_event` across servers
//! (server-server API `make_knock`/`send_knock`, `hierarchy`,
//! `timestamp_to_event`): two Chancery servers, users driven over HTTP.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{User, assert_error, urlencode};
use crate::federation::{signed_as, wait_for_invite};

/// Polls `check` on `user`'s syncs (bounded) until it finds something.
async fn wait_for_sync<T>(user: &User, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sync = user.sync("timeout=0").await;
        if let Some(found) = check(&sync) {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "{what} never showed for {}: {sync}", user.id);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls (bounded) until `user` reads `target`'s membership in `room` as
/// `membership`.
async fn wait_for_membership(user: &User, room: &str, target: &str, membership: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = user.call(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(target)), None).await;
        if got.1["membership"] == membership {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{target} never became {membership} for {}: {}", user.id, got.1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A user of B knocks on a knock-only room of A by its alias: the room
/// shows under `rooms.knock` on B with its stripped state, A's members see
/// the knock, an invite accepts it and the knocker joins. A second knocker
/// retracts their knock. Knocks on an invite-only room and on an unknown
/// room are refused as the resident server says.
async fn knocks_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let carol = User::new(&b.base_url, "carol").await;
    let room = alice
        .create_room(json!({
            "room_alias_name": "door",
            "preset": "private_chat",
            "name": "Behind the door",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        }))
        .await;

    let alias = format!("#door:{}", a.server_name());
    let knocked = bob.ok(Method::POST, &format!("/knock/{}", urlencode(&alias)), Some(json!({"reason": "let me in"}))).await;
    assert_eq!(knocked["room_id"], room.as_str());
    // B shows the knock with the room's stripped state.
    let knock = wait_for_sync(&bob, "the knock", |s| Some(s["rooms"]["knock"][&room].clone()).filter(Value::is_object)).await;
    let events = knock["knock_state"]["events"].as_array().cloned().unwrap_or_default();
    let has = |kind: &str, check: &dyn Fn(&Value) -> bool| events.iter().any(|e| e["type"] == kind && check(e));
    assert!(has("m.room.name", &|e| e["content"]["name"] == "Behind the door"), "{knock}");
    assert!(has("m.room.join_rules", &|e| e["content"]["join_rule"] == "knock"), "{knock}");
    assert!(has("m.room.member", &|e| e["state_key"] == bob.id.as_str() && e["content"]["membership"] == "knock"), "{knock}");
    // Knocking again changes nothing.
    bob.ok(Method::POST, &format!("/knock/{room}"), Some(json!({}))).await;

    // A's members see the knock, with its reason.
    wait_for_membership(&alice, &room, &bob.id, "knock").await;
    let member = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(&bob.id)), None).await;
    assert_eq!(member["reason"], "let me in", "{member}");

    // Accepted: invited, then joined through A.
    alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": bob.id}))).await;
    wait_for_invite(&bob, &room).await;
    bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    let members = bob.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&bob.id].is_object(), "{members}");
    wait_for_membership(&alice, &room, &bob.id, "join").await;

    // Carol knocks by room id and `via`, then takes it back.
    let via = format!("/knock/{room}?via={}", urlencode(a.server_name()));
    carol.ok(Method::POST, &via, Some(json!({}))).await;
    wait_for_membership(&alice, &room, &carol.id, "knock").await;
    carol.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    wait_for_membership(&alice, &room, &carol.id, "leave").await;

    // An invite-only room refuses knocks; an unknown room is not found.
    let private = alice.create_room(json!({"room_alias_name": "private", "preset": "private_chat"})).await;
    let got = carol.call(Method::POST, &format!("/knock/{}", urlencode(&format!("#private:{}", a.server_name()))), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got = carol.call(Method::GET, &format!("/rooms/{private}/state"), None).await;
    assert_eq!(got.0, 403, "B does not know the private room: {}", got.1);
    let unknown = format!("/knock/{}?via={}", urlencode(&format!("!nowhere:{}", a.server_name())), urlencode(a.server_name()));
    let got = carol.call(Method::POST, &unknown, Some(json!({}))).await;
    assert_error(&got, 404, "M_NOT_FOUND");

    // The server-server endpoints themselves: a knock for another
    // server's user, and one on a room that takes none.
    let path = format!("/_matrix/federation/v1/make_knock/{}/{}?ver=11", urlencode(&room), urlencode(&alice.id));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let path = format!("/_matrix/federation/v1/make_knock/{}/{}?ver=11", urlencode(&private), urlencode(&carol.id));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let path = format!("/_matrix/federation/v1/make_knock/{}/{}?ver=1", urlencode(&room), urlencode(&carol.id));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (400, Some("M_INCOMPATIBLE_ROOM_VERSION")), "{body}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(knocks_across_servers);
