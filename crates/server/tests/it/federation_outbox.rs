//! The persisted EDU outbox (issue 16): EDUs that must arrive (to-device
//! messages, device-list and cross-signing updates) are committed before
//! the client's request returns, and reach the other server even when it
//! was down and the sending server restarted meanwhile (so nothing held in
//! memory could have carried them). Each test stops B, acts on A, restarts
//! A while B is still down, then brings B back on its port.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, login, urlencode};

/// Syncs `user` from `since` (bounded: 60 s) until `done` holds of what was
/// seen; `see` is shown every answer. Returns the last `next_batch`.
async fn sync_until(user: &User, since: &str, what: &str, mut see: impl FnMut(&Value) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut since = since.to_owned();
    loop {
        let sync = user.sync(&format!("timeout=2000&since={since}")).await;
        since = sync["next_batch"].as_str().expect("a next_batch").to_owned();
        if see(&sync) {
            return since;
        }
        assert!(std::time::Instant::now() < deadline, "{what} never happened for {}", user.id);
    }
}

/// A fresh sync token of `user`.
async fn token(user: &User) -> String {
    user.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned()
}

/// Alice on A and Bob on B in an encrypted room of Alice's that Bob joined
/// over federation; returns Bob's sync token once he is in.
async fn shared_encrypted_room(a: &TestServer, alice: &User, bob: &User) -> String {
    alice
        .create_room(json!({
            "room_alias_name": "secret", "preset": "public_chat",
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        }))
        .await;
    let alias = format!("#secret:{}", a.server_name());
    let since = token(bob).await;
    let room = bob.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    sync_until(bob, &since, "Bob sees the room", |sync| sync["rooms"]["join"][&room].is_object()).await
}

fn changed_has(sync: &Value, user_id: &str) -> bool {
    sync["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| u == user_id))
}

/// A to-device message for a user of a stopped server, sent before the
/// sending server restarts, arrives once both are up again, exactly once
/// (a client's retry of the request too) and before a later one.
async fn to_device_survives_both_servers_restarting(backend: Backend) {
    let mut a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let mut b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let mut alice = User::new(&a.base_url, "alice").await;
    let mut bob = User::new(&b.base_url, "bob").await;
    let since = token(&bob).await;

    let (a_mut, alice_ref, bob_id) = (&mut a, &alice, bob.id.clone());
    b.restart_after(move || async move {
        let body = json!({"messages": {bob_id: {"*": {"note": "sent while B was down"}}}});
        alice_ref.ok(Method::PUT, "/sendToDevice/org.example.note/td1", Some(body)).await;
        a_mut.restart().await.unwrap();
    })
    .await
    .unwrap();
    (alice.base, bob.base) = (a.base_url.clone(), b.base_url.clone());
    // The client retries the first request (it never saw the answer):
    // queued again, dropped by B as a repeat.
    let body = json!({"messages": {bob.id.clone(): {"*": {"note": "sent while B was down"}}}});
    alice.ok(Method::PUT, "/sendToDevice/org.example.note/td1", Some(body)).await;
    // A later message, sent once both are up: the first must come before
    // it, and only once.
    let body = json!({"messages": {bob.id.clone(): {"*": {"note": "sent after"}}}});
    alice.ok(Method::PUT, "/sendToDevice/org.example.note/td2", Some(body)).await;

    let mut notes: Vec<String> = Vec::new();
    sync_until(&bob, &since, "the to-device messages' arrival", |sync| {
        for event in sync["to_device"]["events"].as_array().into_iter().flatten() {
            if event["type"] == "org.example.note" {
                assert_eq!(event["sender"], alice.id.as_str());
                notes.push(event["content"]["note"].as_str().unwrap_or_default().to_owned());
            }
        }
        notes.iter().any(|n| n == "sent after")
    })
    .await;
    assert_eq!(notes, ["sent while B was down", "sent after"], "each once, in order");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(to_device_survives_both_servers_restarting);

/// A device-list change of Alice's while B is down reaches B after A
/// restarted: Bob sees Alice in `device_lists.changed`.
async fn device_list_update_survives_both_servers_restarting(backend: Backend) {
    let mut a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let mut b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let mut bob = User::new(&b.base_url, "bob").await;
    let since = shared_encrypted_room(&a, &alice, &bob).await;

    let (a_mut, alice_id) = (&mut a, alice.id.clone());
    b.restart_after(move || async move {
        // A new device of Alice's comes and goes.
        let (status, body) = login(&a_mut.base_url, "alice", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let phone = User { base: a_mut.base_url.clone(), token: body["access_token"].as_str().unwrap().into(), id: alice_id };
        phone.ok(Method::POST, "/logout", Some(json!({}))).await;
        a_mut.restart().await.unwrap();
    })
    .await
    .unwrap();
    bob.base = b.base_url.clone();
    sync_until(&bob, &since, "Alice in Bob's device_lists.changed", |sync| changed_has(sync, &alice.id)).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(device_list_update_survives_both_servers_restarting);

/// Alice sets up cross-signing while B is down; after A restarted and B
/// is back, B has heard of it (`m.signing_key_update`: Bob sees Alice in
/// `device_lists.changed`) and Bob's key query shows her master key.
async fn signing_key_update_survives_both_servers_restarting(backend: Backend) {
    let mut a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let mut b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let mut alice = User::new(&a.base_url, "alice").await;
    let mut bob = User::new(&b.base_url, "bob").await;
    let since = shared_encrypted_room(&a, &alice, &bob).await;
    let master_public = "masterkeyOfAliceAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    let (a_mut, alice_ref) = (&mut a, &alice);
    b.restart_after(move || async move {
        let master =
            json!({"user_id": alice_ref.id, "usage": ["master"], "keys": {format!("ed25519:{master_public}"): master_public}});
        alice_ref.ok(Method::POST, "/keys/device_signing/upload", Some(json!({"master_key": master}))).await;
        a_mut.restart().await.unwrap();
    })
    .await
    .unwrap();
    (alice.base, bob.base) = (a.base_url.clone(), b.base_url.clone());
    sync_until(&bob, &since, "Alice in Bob's device_lists.changed", |sync| changed_has(sync, &alice.id)).await;
    let query = bob.ok(Method::POST, "/keys/query", Some(json!({"device_keys": {alice.id.as_str(): []}}))).await;
    assert_eq!(query["master_keys"][&alice.id]["keys"][format!("ed25519:{master_public}")], master_public, "{query}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(signing_key_update_survives_both_servers_restarting);

/// B caches the keys A answered for Alice: Bob's key query still finds
/// them while A is down, and once Alice changes her keys (A announces it)
/// B asks again rather than answering from the stale entry.
async fn remote_keys_are_cached_until_their_server_announces_a_change(backend: Backend) {
    let mut a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let mut alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let since = shared_encrypted_room(&a, &alice, &bob).await;
    let master =
        |public: &str, user: &str| json!({"user_id": user, "usage": ["master"], "keys": {format!("ed25519:{public}"): public}});
    let first = "firstMasterKeyOfAliceAAAAAAAAAAAAAAAAAAAAAA";
    alice.ok(Method::POST, "/keys/device_signing/upload", Some(json!({"master_key": master(first, &alice.id)}))).await;
    let since = sync_until(&bob, &since, "Alice in Bob's device_lists.changed", |sync| changed_has(sync, &alice.id)).await;
    let query = json!({"device_keys": {alice.id.as_str(): []}});
    let got = bob.ok(Method::POST, "/keys/query", Some(query.clone())).await;
    assert_eq!(got["master_keys"][&alice.id]["keys"][format!("ed25519:{first}")], first, "{got}");

    // A is down: B answers from what it cached.
    let (bob_ref, query_ref, alice_id) = (&bob, &query, alice.id.clone());
    a.restart_after(move || async move {
        let got = bob_ref.ok(Method::POST, "/keys/query", Some(query_ref.clone())).await;
        assert_eq!(got["master_keys"][&alice_id]["keys"][format!("ed25519:{first}")], first, "{got}");
        assert!(got["failures"].as_object().is_none_or(|f| f.is_empty()), "{got}");
    })
    .await
    .unwrap();
    alice.base = a.base_url.clone();

    // Alice's keys change: A says so, and B asks again.
    let second = "secondMasterKeyOfAliceAAAAAAAAAAAAAAAAAAAAA";
    // Replacing keys asks for the password (interactive auth).
    let upload = json!({"master_key": master(second, &alice.id)});
    let (status, body) = alice.call(Method::POST, "/keys/device_signing/upload", Some(upload.clone())).await;
    assert_eq!(status, 401, "{body}");
    let mut upload = upload;
    upload["auth"] = json!({"type": "m.login.password", "session": body["session"],
        "identifier": {"type": "m.id.user", "user": alice.id}, "password": PASSWORD});
    alice.ok(Method::POST, "/keys/device_signing/upload", Some(upload)).await;
    sync_until(&bob, &since, "Alice in Bob's device_lists.changed again", |sync| changed_has(sync, &alice.id)).await;
    let got = bob.ok(Method::POST, "/keys/query", Some(query)).await;
    assert_eq!(got["master_keys"][&alice.id]["keys"][format!("ed25519:{second}")], second, "{got}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(remote_keys_are_cached_until_their_server_announces_a_change);
