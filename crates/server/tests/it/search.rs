//! The user directory and server-side search, on both backends.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{assert_error, call, register};

async fn post(base: &str, token: &str, path: &str, body: Value) -> Value {
    let (status, body) = call(Method::POST, &format!("{base}/_matrix/client/v3{path}"), Some(token), Some(body)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn ids(results: &Value, field: &str) -> Vec<String> {
    results.as_array().unwrap().iter().map(|r| r[field].as_str().unwrap().to_owned()).collect()
}

async fn search(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let (_, alice, _) = register(&base, "alice").await;
    let (_, bob, _) = register(&base, "bob").await;
    let (_, carol, _) = register(&base, "carol").await;
    let (_, dave, _) = register(&base, "dave").await;
    let put = |token: String, path: String, body: Value| {
        let base = base.clone();
        async move {
            let (status, body) = call(Method::PUT, &format!("{base}/_matrix/client/v3{path}"), Some(&token), Some(body)).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    put(bob.clone(), "/profile/@bob:localhost/displayname".into(), json!({"displayname": "Bob Émile Durand"})).await;

    // Alice shares a private room with bob; carol is in a public room; dave
    // is nowhere.
    let private =
        post(&base, &alice, "/createRoom", json!({"preset": "private_chat", "invite": ["@bob:localhost"]})).await["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
    post(&base, &bob, &format!("/join/{private}"), json!({})).await;
    let public =
        post(&base, &carol, "/createRoom", json!({"preset": "public_chat"})).await["room_id"].as_str().unwrap().to_owned();

    let dir = post(&base, &alice, "/user_directory/search", json!({"search_term": "durand"})).await;
    assert_eq!(ids(&dir["results"], "user_id"), ["@bob:localhost"]);
    assert_eq!(dir["results"][0]["display_name"], "Bob Émile Durand");
    assert_eq!(dir["limited"], false);
    let dir = post(&base, &alice, "/user_directory/search", json!({"search_term": "localhost"})).await;
    assert_eq!(
        ids(&dir["results"], "user_id"),
        ["@bob:localhost", "@carol:localhost"],
        "dave shares nothing, alice is the searcher"
    );
    let dir = post(&base, &alice, "/user_directory/search", json!({"search_term": "localhost", "limit": 1})).await;
    assert_eq!(dir["limited"], true);
    let dir = post(&base, &alice, "/user_directory/search", json!({"search_term": "dave"})).await;
    assert!(dir["results"].as_array().unwrap().is_empty());
    let (_, _) = (&public, &dave);

    // Messages in alice and bob's room.
    let texts =
        ["The budget meeting moved to Tuesday", "Budget figures attached", "Lunch?", "Final budgetary review", "nothing here"];
    let mut event_ids = Vec::new();
    for (n, text) in texts.iter().enumerate() {
        let sent =
            put(alice.clone(), format!("/rooms/{private}/send/m.room.message/s{n}"), json!({"msgtype": "m.text", "body": text}))
                .await;
        event_ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    put(
        carol.clone(),
        format!("/rooms/{public}/send/m.room.message/c"),
        json!({"msgtype": "m.text", "body": "budget in public"}),
    )
    .await;

    let criteria =
        |term: &str, order: &str| json!({"search_categories": {"room_events": {"search_term": term, "order_by": order}}});
    let found = post(&base, &bob, "/search", criteria("budget", "recent")).await;
    let events = &found["search_categories"]["room_events"];
    let bodies: Vec<_> =
        events["results"].as_array().unwrap().iter().map(|r| r["result"]["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(
        bodies,
        ["Final budgetary review", "Budget figures attached", "The budget meeting moved to Tuesday"],
        "prefix match, newest first, only rooms bob is in"
    );
    assert_eq!(events["count"], 3);
    assert_eq!(events["highlights"], json!(["budget"]));
    let by_rank = post(&base, &bob, "/search", criteria("budget meeting", "rank")).await;
    assert_eq!(by_rank["search_categories"]["room_events"]["results"][0]["result"]["event_id"], event_ids[0].as_str());

    // Pagination, context, groups and state.
    let paged = post(
        &base,
        &bob,
        "/search",
        json!({"search_categories": {"room_events": {
        "search_term": "budget", "order_by": "recent", "filter": {"limit": 2},
        "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true},
        "groupings": {"group_by": [{"key": "room_id"}]}, "include_state": true}}}),
    )
    .await;
    let page = &paged["search_categories"]["room_events"];
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
    let next = page["next_batch"].as_str().expect("more results");
    let ctx = &page["results"][0]["context"];
    assert_eq!(ctx["events_before"][0]["content"]["body"], "Lunch?");
    assert!(ctx["profile_info"]["@alice:localhost"].is_object());
    assert_eq!(page["groups"]["room_id"][&private]["results"].as_array().unwrap().len(), 2);
    assert!(page["state"][&private].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    let (status, rest) = call(
        Method::POST,
        &format!("{base}/_matrix/client/v3/search?next_batch={next}"),
        Some(&bob),
        Some(criteria("budget", "recent")),
    )
    .await;
    assert_eq!(status, 200);
    let rest = &rest["search_categories"]["room_events"];
    assert_eq!(rest["results"].as_array().unwrap().len(), 1);
    assert!(rest.get("next_batch").is_none());

    // Redacted messages are no longer found.
    put(alice.clone(), format!("/rooms/{private}/redact/{}/r1", event_ids[1]), json!({})).await;
    let after = post(&base, &bob, "/search", criteria("figures", "recent")).await;
    assert_eq!(after["search_categories"]["room_events"]["count"], 0);

    // Bad input.
    let bad_key = json!({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.secret"]}}});
    assert_error(
        &call(Method::POST, &format!("{base}/_matrix/client/v3/search"), Some(&bob), Some(bad_key)).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &call(Method::POST, &format!("{base}/_matrix/client/v3/search"), Some(&bob), Some(json!({}))).await,
        400,
        "M_BAD_JSON",
    );
    let long = json!({"search_term": "x".repeat(600)});
    assert_error(
        &call(Method::POST, &format!("{base}/_matrix/client/v3/user_directory/search"), Some(&bob), Some(long)).await,
        400,
        "M_INVALID_PARAM",
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_sqlite() {
    search(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_postgres() {
    search(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_can_search_everyone() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.user_directory.search_all_users = true).await.unwrap();
    let (_, alice, _) = register(&server.base_url, "alice").await;
    register(&server.base_url, "zed").await;
    let dir = post(&server.base_url, &alice, "/user_directory/search", json!({"search_term": "zed"})).await;
    assert_eq!(ids(&dir["results"], "user_id"), ["@zed:localhost"]);
    server.stop().await.unwrap();
}
