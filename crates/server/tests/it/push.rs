//! Push rules: the spec's defaults give unread and highlight counts, users
//! edit their rules, `/notifications` lists what notified them.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{assert_error, call, ok, register, urlencode};

async fn push(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let api = |path: &str| format!("{base}/_matrix/client/v3{path}");
    let (_, alice, _) = register(&base, "alice").await;
    let (_, bob, _) = register(&base, "bob").await;
    let room = ok(Method::POST, api("/createRoom"), &alice, Some(json!({"preset": "public_chat"}))).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(Method::POST, api(&format!("/join/{room}")), &bob, Some(json!({}))).await;
    let other = ok(Method::POST, api("/createRoom"), &alice, Some(json!({"preset": "public_chat"}))).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(Method::POST, api(&format!("/join/{other}")), &bob, Some(json!({}))).await;
    let send = |token: String, txn: String, content: Value| {
        let url = api(&format!("/rooms/{room}/send/m.room.message/{txn}"));
        async move { ok(Method::PUT, url, &token, Some(content)).await }
    };

    // Two plain messages and one mentioning bob.
    send(alice.clone(), "1".into(), json!({"msgtype": "m.text", "body": "hello"})).await;
    send(alice.clone(), "2".into(), json!({"msgtype": "m.text", "body": "anyone?"})).await;
    // One in another room, between them: /notifications merges the rooms.
    ok(
        Method::PUT,
        api(&format!("/rooms/{other}/send/m.room.message/o1")),
        &alice,
        Some(json!({"msgtype": "m.text", "body": "elsewhere"})),
    )
    .await;
    send(
        alice.clone(),
        "3".into(),
        json!({"msgtype": "m.text", "body": "bob, look", "m.mentions": {"user_ids": ["@bob:localhost"]}}),
    )
    .await;
    let sync = ok(Method::GET, api("/sync"), &bob, None).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"], json!({"notification_count": 3, "highlight_count": 1}));
    // The initial sync carries the (default) push rules.
    let rules =
        sync["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules").expect("m.push_rules");
    assert!(rules["content"]["global"]["underride"].is_array());
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    // Alice's own messages do not notify her.
    let sync_alice = ok(Method::GET, api("/sync"), &alice, None).await;
    assert_eq!(sync_alice["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);

    let notifications = ok(Method::GET, api("/notifications"), &bob, None).await;
    let list = notifications["notifications"].as_array().unwrap();
    let bodies: Vec<&str> = list.iter().map(|n| n["event"]["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["bob, look", "elsewhere", "anyone?", "hello"]);
    assert_eq!(list[1]["room_id"], other.as_str());
    assert_eq!(list[0]["room_id"], room.as_str());
    assert_eq!(list[0]["read"], false);
    assert!(list[0]["actions"].as_array().unwrap().iter().any(|a| a["set_tweak"] == "highlight"));
    let highlights = ok(Method::GET, api("/notifications?only=highlight"), &bob, None).await;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);
    let page = ok(Method::GET, api("/notifications?limit=2"), &bob, None).await;
    let next = page["next_token"].as_str().unwrap();
    let rest = ok(Method::GET, api(&format!("/notifications?from={next}")), &bob, None).await;
    let rest: Vec<&str> =
        rest["notifications"].as_array().unwrap().iter().map(|n| n["event"]["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(rest, ["anyone?", "hello"]);

    // Bob answers: sending implies reading, the counts reset.
    send(bob.clone(), "b1".into(), json!({"msgtype": "m.text", "body": "here"})).await;
    let sync = ok(Method::GET, api("/sync"), &bob, None).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"], json!({"notification_count": 0, "highlight_count": 0}));

    // Rules: the defaults are there; bob mutes the room with a room rule.
    let rules = ok(Method::GET, api("/pushrules/"), &bob, None).await;
    assert!(rules["global"]["override"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.master"));
    ok(Method::PUT, api(&format!("/pushrules/global/room/{room}")), &bob, Some(json!({"actions": []}))).await;
    let rule = ok(Method::GET, api(&format!("/pushrules/global/room/{room}")), &bob, None).await;
    assert_eq!(rule["rule_id"], room.as_str());
    // The change reaches bob's other devices through /sync.
    let changed = ok(Method::GET, api(&format!("/sync?since={since}&timeout=0")), &bob, None).await;
    let rules =
        changed["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules").expect("m.push_rules");
    assert!(rules["content"]["global"]["room"].as_array().unwrap().iter().any(|r| r["rule_id"] == room.as_str()));

    // A read receipt on the newest event clears the counts too.
    let read_me = send(
        alice.clone(),
        "r1".into(),
        json!({"msgtype": "m.text", "body": "read me", "m.mentions": {"user_ids": ["@bob:localhost"]}}),
    )
    .await;
    let sync = ok(Method::GET, api("/sync"), &bob, None).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"], json!({"notification_count": 1, "highlight_count": 1}));
    let read_me = read_me["event_id"].as_str().unwrap();
    ok(Method::POST, api(&format!("/rooms/{room}/receipt/m.read/{read_me}")), &bob, Some(json!({}))).await;
    let sync = ok(Method::GET, api("/sync"), &bob, None).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"], json!({"notification_count": 0, "highlight_count": 0}));
    send(alice.clone(), "4".into(), json!({"msgtype": "m.text", "body": "muted"})).await;
    let sync = ok(Method::GET, api("/sync"), &bob, None).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
    ok(Method::DELETE, api(&format!("/pushrules/global/room/{room}")), &bob, None).await;

    // Disable the default message rules (a two-member room counts as one
    // to one); enabled/actions read back.
    ok(Method::PUT, api("/pushrules/global/underride/.m.rule.message/enabled"), &bob, Some(json!({"enabled": false}))).await;
    ok(Method::PUT, api("/pushrules/global/underride/.m.rule.room_one_to_one/enabled"), &bob, Some(json!({"enabled": false})))
        .await;
    assert_eq!(
        ok(Method::GET, api("/pushrules/global/underride/.m.rule.message/enabled"), &bob, None).await,
        json!({"enabled": false})
    );
    send(alice.clone(), "5".into(), json!({"msgtype": "m.text", "body": "quiet"})).await;
    let sync = ok(Method::GET, api("/sync"), &bob, None).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
    ok(Method::PUT, api("/pushrules/global/underride/.m.rule.message/actions"), &bob, Some(json!({"actions": ["notify"]}))).await;
    let actions = ok(Method::GET, api("/pushrules/global/underride/.m.rule.message/actions"), &bob, None).await;
    assert_eq!(actions, json!({"actions": ["notify"]}));

    // Threads count apart when the client asks (unread_thread_notifications):
    // a thread receipt clears its thread only.
    ok(Method::PUT, api("/pushrules/global/underride/.m.rule.message/enabled"), &bob, Some(json!({"enabled": true}))).await;
    ok(Method::PUT, api("/pushrules/global/underride/.m.rule.room_one_to_one/enabled"), &bob, Some(json!({"enabled": true})))
        .await;
    let root = send(bob.clone(), "t-root".into(), json!({"msgtype": "m.text", "body": "thread root"})).await;
    let root = root["event_id"].as_str().unwrap().to_owned();
    let in_thread = |n: u32| json!({"msgtype": "m.text", "body": format!("reply {n}"), "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    send(alice.clone(), "t1".into(), in_thread(1)).await;
    let second = send(alice.clone(), "t2".into(), in_thread(2)).await;
    send(alice.clone(), "m1".into(), json!({"msgtype": "m.text", "body": "main timeline"})).await;
    let threaded = urlencode(r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#);
    let sync = ok(Method::GET, api(&format!("/sync?filter={threaded}")), &bob, None).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 1, "{joined}");
    assert_eq!(joined["unread_thread_notifications"][&root]["notification_count"], 2, "{joined}");
    let second = second["event_id"].as_str().unwrap();
    ok(Method::POST, api(&format!("/rooms/{room}/receipt/m.read/{second}")), &bob, Some(json!({"thread_id": root}))).await;
    let sync = ok(Method::GET, api(&format!("/sync?filter={threaded}")), &bob, None).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 1, "{joined}");
    assert!(joined["unread_thread_notifications"].get(&root).is_none(), "{joined}");

    // Errors.
    assert_error(&call(Method::GET, &api("/pushrules/global/override/nope"), Some(&bob), None).await, 404, "M_NOT_FOUND");
    assert_error(
        &call(Method::DELETE, &api("/pushrules/global/override/.m.rule.master"), Some(&bob), None).await,
        400,
        "M_INVALID_PARAM",
    );
    let bad =
        call(Method::PUT, &api("/pushrules/global/override/.mine"), Some(&bob), Some(json!({"actions": [], "conditions": []})))
            .await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
    let unknown_before =
        call(Method::PUT, &api("/pushrules/global/room/!x:localhost?before=nothere"), Some(&bob), Some(json!({"actions": []})))
            .await;
    assert_error(&unknown_before, 404, "M_NOT_FOUND");
    server.stop().await.unwrap();
}

on_both_backends!(push);
