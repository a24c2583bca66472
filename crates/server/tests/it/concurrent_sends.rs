//! Many senders in one room at once. On SQLite a room's messages are
//! pipelined (each built on the one before while that one is committed);
//! whatever the backend, every accepted message must be stored exactly
//! once, each sender's in its order, and a state change must hold for
//! every event after it.

use std::collections::HashSet;
use std::sync::Arc;

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::User;

const PER_SENDER: usize = 40;
/// Alice raises `events_default` after this many of her messages.
const RAISE_AFTER: usize = 20;

/// The room's whole timeline, oldest first (bounded pages).
async fn timeline(user: &User, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..20 {
        let path = match &from {
            Some(from) => format!("/rooms/{room}/messages?dir=b&limit=100&from={from}"),
            None => format!("/rooms/{room}/messages?dir=b&limit=100"),
        };
        let page = user.ok(Method::GET, &path, None).await;
        events.extend(page["chunk"].as_array().unwrap().iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    events.reverse();
    events
}

async fn concurrent_sends(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let carol = User::new(&server.base_url, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    for user in [&bob, &carol] {
        user.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    }

    // Three senders at once; halfway through her share, alice (100) lets
    // only power 50 send, which bob and carol (0) lack from then on.
    let senders: Vec<Arc<User>> = vec![Arc::new(alice), Arc::new(bob), Arc::new(carol)];
    let mut tasks = Vec::new();
    for (i, user) in senders.iter().enumerate() {
        let (user, room) = (Arc::clone(user), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for k in 0..PER_SENDER {
                if i == 0 && k == RAISE_AFTER {
                    let path = format!("/rooms/{room}/state/m.room.power_levels");
                    let mut levels = user.ok(Method::GET, &path, None).await;
                    levels["events_default"] = json!(50);
                    user.ok(Method::PUT, &path, Some(levels)).await;
                }
                let path = format!("/rooms/{room}/send/m.room.message/s{i}-{k}");
                let body = json!({"msgtype": "m.text", "body": format!("{i}/{k}")});
                let (status, answer) = user.call(Method::PUT, &path, Some(body)).await;
                answers.push((k, status.as_u16(), answer));
            }
            answers
        }));
    }
    // The same transaction twice at once: one event.
    let alice = Arc::clone(&senders[0]);
    let dup = |alice: Arc<User>, room: String| async move {
        alice.send(&room, "dup", json!({"msgtype": "m.text", "body": "once"})).await
    };
    let (a, b) = tokio::join!(dup(Arc::clone(&alice), room.clone()), dup(Arc::clone(&alice), room.clone()));
    assert_eq!(a, b, "one transaction id, one event");

    let mut accepted: HashSet<String> = HashSet::from([a]);
    for (i, task) in tasks.into_iter().enumerate() {
        let mut refused_from = None;
        for (k, status, answer) in task.await.unwrap() {
            match status {
                200 => {
                    assert!(refused_from.is_none(), "sender {i}: message {k} accepted after one was refused");
                    accepted.insert(answer["event_id"].as_str().unwrap().to_owned());
                }
                403 if i > 0 => {
                    assert_eq!(answer["errcode"], "M_FORBIDDEN");
                    refused_from.get_or_insert(k);
                }
                _ => panic!("sender {i}, message {k}: {status} {answer}"),
            }
        }
        if i > 0 {
            assert!(refused_from.is_some(), "sender {i}: nothing refused after the power levels changed");
        }
    }

    let events = timeline(&senders[0], &room).await;
    let messages: Vec<&Value> = events.iter().filter(|e| e["type"] == "m.room.message").collect();
    let stored: Vec<String> = messages.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(stored.len(), accepted.len(), "each accepted message stored once");
    assert_eq!(stored.iter().cloned().collect::<HashSet<_>>(), accepted);
    // Each sender's messages in the order they were sent.
    for i in 0..senders.len() {
        let ks: Vec<usize> =
            messages.iter().filter_map(|e| e["content"]["body"].as_str()?.strip_prefix(&format!("{i}/"))?.parse().ok()).collect();
        assert!(ks.windows(2).all(|w| w[0] < w[1]), "sender {i} out of order: {ks:?}");
    }
    // Nothing of bob's or carol's after the change.
    let raised = events
        .iter()
        .rposition(|e| e["type"] == "m.room.power_levels" && e["content"]["events_default"] == 50)
        .expect("the power levels change");
    for e in &events[raised..] {
        assert!(e["type"] != "m.room.message" || e["sender"] == senders[0].id.as_str(), "sent without power: {e}");
    }
    // A last message goes on top of everything.
    let last = senders[0].say(&room, "last", "last").await;
    assert_eq!(timeline(&senders[0], &room).await.last().unwrap()["event_id"], last.as_str());
    server.stop().await.unwrap();
}

on_both_backends!(concurrent_sends_in_one_room: concurrent_sends());
