//! The Synapse-compatible admin API over plain HTTP on both backends:
//! reading, paging, filtering and deleting content reports as a server
//! admin; everyone else is refused.

use chancery_testkit::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{User, assert_error, call, urlencode};

/// A request to `/_synapse/admin/v1{path}` with this user's token.
async fn admin_call(user: &User, method: Method, path: &str) -> (StatusCode, Value) {
    call(method, &format!("{}/_synapse/admin/v1{path}", user.base), Some(&user.token), None).await
}

async fn admin_ok(user: &User, method: Method, path: &str) -> Value {
    let (status, body) = admin_call(user, method, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn report_event(user: &User, room: &str, event: &str, body: Value) {
    user.ok(Method::POST, &format!("/rooms/{room}/report/{}", urlencode(event)), Some(body)).await;
}

fn report_ids(list: &Value) -> Vec<u64> {
    list.as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

async fn reports_admin_api(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let olivia = User::admin(&server, "olivia").await;

    let ops =
        alice.create_room(json!({"preset": "public_chat", "name": "Ops", "topic": "Operations", "room_alias_name": "ops"})).await;
    bob.ok(Method::POST, &format!("/join/{ops}"), Some(json!({}))).await;
    carol.ok(Method::POST, &format!("/join/{ops}"), Some(json!({}))).await;
    let by_alice = alice.say(&ops, "a", "first message").await;
    let by_bob = bob.say(&ops, "b", "second message").await;
    let quiet = carol.create_room(json!({"preset": "private_chat"})).await;
    let by_carol = carol.say(&quiet, "c", "a note").await;
    report_event(&bob, &ops, &by_alice, json!({"reason": "spam", "score": -100})).await;
    report_event(&carol, &ops, &by_bob, json!({"reason": "rude"})).await;
    carol.ok(Method::POST, &format!("/rooms/{ops}/report"), Some(json!({"reason": "whole room is bad"}))).await;
    bob.ok(Method::POST, &format!("/rooms/{ops}/report"), Some(json!({"reason": "off-topic"}))).await;
    report_event(&carol, &quiet, &by_carol, json!({})).await;

    // Only server admins: the others are refused before anything else.
    for path in ["/event_reports", "/event_reports/1", "/event_reports?limit=-1", "/room_reports", "/room_reports/1"] {
        assert_error(&admin_call(&bob, Method::GET, path).await, 403, "M_FORBIDDEN");
    }
    assert_error(&admin_call(&bob, Method::DELETE, "/event_reports/1").await, 403, "M_FORBIDDEN");
    assert_error(&admin_call(&bob, Method::DELETE, "/room_reports/1").await, 403, "M_FORBIDDEN");
    let anonymous = call(Method::GET, &format!("{base}/_synapse/admin/v1/event_reports"), None, None).await;
    assert_error(&anonymous, 401, "M_MISSING_TOKEN");

    // Event reports, the most recent first, in Synapse's shape; room
    // reports are not among them.
    let list = admin_ok(&olivia, Method::GET, "/event_reports").await;
    assert_eq!(list["total"], 3, "{list}");
    assert!(list.get("next_token").is_none(), "{list}");
    let reports = list["event_reports"].as_array().unwrap();
    let events: Vec<&str> = reports.iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    assert_eq!(events, [by_carol.as_str(), by_bob.as_str(), by_alice.as_str()]);
    let spam = reports[2].clone();
    let spam_id = spam["id"].as_u64().unwrap();
    assert!(spam["received_ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000), "{spam}");
    let expected = json!({
        "id": spam_id,
        "received_ts": spam["received_ts"],
        "room_id": ops,
        "name": "Ops",
        "event_id": by_alice,
        "user_id": bob.id,
        "reason": "spam",
        "score": -100,
        "sender": alice.id,
        "canonical_alias": "#ops:localhost",
    });
    assert_eq!(spam, expected);
    assert_eq!(
        (&reports[0]["name"], &reports[0]["canonical_alias"], &reports[0]["reason"], &reports[0]["score"]),
        (&Value::Null, &Value::Null, &Value::Null, &Value::Null),
        "a room without name or alias, a report without reason or score"
    );
    let oldest_first = admin_ok(&olivia, Method::GET, "/event_reports?dir=f").await;
    let mut reversed = report_ids(&list["event_reports"]);
    reversed.reverse();
    assert_eq!(report_ids(&oldest_first["event_reports"]), reversed);

    // Pages by offset: next_token until the end.
    let first = admin_ok(&olivia, Method::GET, "/event_reports?limit=2").await;
    assert_eq!(
        (first["event_reports"].as_array().unwrap().len(), &first["next_token"], &first["total"]),
        (2, &json!(2), &json!(3))
    );
    let second = admin_ok(&olivia, Method::GET, "/event_reports?limit=2&from=2").await;
    assert_eq!(report_ids(&second["event_reports"]), [spam_id]);
    assert!(second.get("next_token").is_none(), "{second}");
    // A limit beyond the cap is capped, not refused.
    assert_eq!(
        admin_ok(&olivia, Method::GET, "/event_reports?limit=1000000").await["event_reports"].as_array().unwrap().len(),
        3
    );

    // Filters: reporter and room ids containing the value, the reported
    // event's sender.
    let count = |query: String| {
        let olivia = &olivia;
        async move { admin_ok(olivia, Method::GET, &format!("/event_reports?{query}")).await["total"].as_u64().unwrap() }
    };
    assert_eq!(count("user_id=carol".into()).await, 2);
    assert_eq!(count(format!("room_id={}", urlencode(&ops))).await, 2);
    assert_eq!(count(format!("event_sender_user_id={}", urlencode(&bob.id))).await, 1);
    assert_eq!(count("user_id=nobody".into()).await, 0);

    // Bad parameters.
    for query in ["from=-1", "limit=-5", "limit=many", "dir=sideways", "from=1.5"] {
        assert_error(&admin_call(&olivia, Method::GET, &format!("/event_reports?{query}")).await, 400, "M_INVALID_PARAM");
    }
    for id in ["abc", "-1"] {
        assert_error(&admin_call(&olivia, Method::GET, &format!("/event_reports/{id}")).await, 400, "M_INVALID_PARAM");
        assert_error(&admin_call(&olivia, Method::DELETE, &format!("/event_reports/{id}")).await, 400, "M_INVALID_PARAM");
        assert_error(&admin_call(&olivia, Method::GET, &format!("/room_reports/{id}")).await, 400, "M_INVALID_PARAM");
    }
    assert_error(&admin_call(&olivia, Method::GET, "/room_reports?from=x").await, 400, "M_INVALID_PARAM");

    // One event report, with the reported event as stored.
    let detail = admin_ok(&olivia, Method::GET, &format!("/event_reports/{spam_id}")).await;
    let event_json = detail["event_json"].clone();
    assert_eq!(
        (&event_json["type"], &event_json["sender"], &event_json["room_id"], &event_json["content"]["body"]),
        (&json!("m.room.message"), &json!(alice.id), &json!(ops), &json!("first message")),
        "{detail}"
    );
    assert!(event_json["signatures"]["localhost"].is_object(), "the signed PDU: {event_json}");
    let mut without_event = detail.clone();
    without_event.as_object_mut().unwrap().remove("event_json");
    assert_eq!(without_event, expected);

    // Room reports, the most recent first, paged by report id.
    let rooms = admin_ok(&olivia, Method::GET, "/room_reports").await;
    assert_eq!(rooms["total"], 2, "{rooms}");
    let room_reports = rooms["room_reports"].as_array().unwrap();
    let reasons: Vec<&str> = room_reports.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["off-topic", "whole room is bad"]);
    let off_topic_id = room_reports[0]["id"].as_u64().unwrap();
    let whole_room_id = room_reports[1]["id"].as_u64().unwrap();
    let off_topic = json!({
        "id": off_topic_id,
        "received_ts": room_reports[0]["received_ts"],
        "room_id": ops,
        "user_id": bob.id,
        "reason": "off-topic",
        "canonical_alias": "#ops:localhost",
        "name": "Ops",
        "topic": "Operations",
    });
    assert_eq!(room_reports[0], off_topic);
    let page = admin_ok(&olivia, Method::GET, "/room_reports?limit=1").await;
    assert_eq!((report_ids(&page["room_reports"]), &page["next_batch"]), (vec![off_topic_id], &json!(off_topic_id)));
    let rest = admin_ok(&olivia, Method::GET, &format!("/room_reports?limit=1&from={off_topic_id}")).await;
    assert_eq!(report_ids(&rest["room_reports"]), [whole_room_id]);
    assert!(rest.get("next_batch").is_none(), "{rest}");
    let carols = admin_ok(&olivia, Method::GET, &format!("/room_reports?user_id={}", urlencode(&carol.id))).await;
    assert_eq!((report_ids(&carols["room_reports"]), &carols["total"]), (vec![whole_room_id], &json!(1)));
    assert_eq!(admin_ok(&olivia, Method::GET, "/room_reports?user_id=carol").await["total"], 0, "exact match");
    assert_eq!(admin_ok(&olivia, Method::GET, &format!("/room_reports/{off_topic_id}")).await, off_topic);

    // Each list's ids are its own: a room report is no event report.
    assert_error(&admin_call(&olivia, Method::GET, &format!("/event_reports/{off_topic_id}")).await, 404, "M_NOT_FOUND");
    assert_error(&admin_call(&olivia, Method::GET, &format!("/room_reports/{spam_id}")).await, 404, "M_NOT_FOUND");
    assert_error(&admin_call(&olivia, Method::DELETE, &format!("/event_reports/{off_topic_id}")).await, 404, "M_NOT_FOUND");
    assert_error(&admin_call(&olivia, Method::GET, "/event_reports/999999").await, 404, "M_NOT_FOUND");

    // Deleting.
    assert_eq!(admin_ok(&olivia, Method::DELETE, &format!("/event_reports/{spam_id}")).await, json!({}));
    assert_error(&admin_call(&olivia, Method::GET, &format!("/event_reports/{spam_id}")).await, 404, "M_NOT_FOUND");
    assert_error(&admin_call(&olivia, Method::DELETE, &format!("/event_reports/{spam_id}")).await, 404, "M_NOT_FOUND");
    assert_eq!(admin_ok(&olivia, Method::GET, "/event_reports").await["total"], 2);
    assert_eq!(admin_ok(&olivia, Method::DELETE, &format!("/room_reports/{off_topic_id}")).await, json!({}));
    assert_eq!(report_ids(&admin_ok(&olivia, Method::GET, "/room_reports").await["room_reports"]), [whole_room_id]);
    server.stop().await.unwrap();
}

on_both_backends!(reports_admin_api);
