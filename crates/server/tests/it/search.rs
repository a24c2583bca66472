//! The user directory and server-side search, on both backends.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{User, assert_error, call, register};

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

on_both_backends!(search);

fn bodies(results: &Value) -> Vec<String> {
    results.as_array().unwrap().iter().map(|r| r["result"]["content"]["body"].as_str().unwrap().to_owned()).collect()
}

/// `/search` covers the rooms the user is or was in (not forgotten ones),
/// and in each only what history visibility lets them read; `count` counts
/// exactly that and `next_batch` walks through it once.
async fn search_follows_history_visibility(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let invite = |room: String| {
        let (alice, bob_id) = (&alice, bob.id.clone());
        async move { alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": bob_id}))).await }
    };

    // `shared` (private_chat): bob reads what came before he joined and
    // while he was there, not what came after he left.
    let shared = alice.create_room(json!({"preset": "private_chat", "name": "Old name"})).await;
    alice.say(&shared, "a", "budget alpha").await;
    invite(shared.clone()).await;
    bob.ok(Method::POST, &format!("/join/{shared}"), Some(json!({}))).await;
    alice.say(&shared, "b", "budget beta").await;
    bob.ok(Method::POST, &format!("/rooms/{shared}/leave"), Some(json!({}))).await;
    alice.say(&shared, "c", "budget gamma").await;
    alice.ok(Method::PUT, &format!("/rooms/{shared}/state/m.room.name/"), Some(json!({"name": "New name"}))).await;
    // `joined`: only what came after bob joined.
    let joined = alice
        .create_room(json!({"preset": "private_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    alice.say(&joined, "d", "budget delta").await;
    invite(joined.clone()).await;
    bob.ok(Method::POST, &format!("/join/{joined}"), Some(json!({}))).await;
    alice.say(&joined, "e", "budget epsilon").await;
    // A room bob was never in.
    let other = carol.create_room(json!({"preset": "public_chat"})).await;
    carol.say(&other, "z", "budget zeta").await;

    let search = |body: Value, next: Option<String>| {
        let bob = &bob;
        async move {
            let path = next.map(|n| format!("/search?next_batch={n}")).unwrap_or_else(|| "/search".into());
            bob.ok(Method::POST, &path, Some(body)).await["search_categories"]["room_events"].clone()
        }
    };
    let criteria = |extra: Value| {
        let mut c = json!({"search_term": "budget", "order_by": "recent"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"search_categories": {"room_events": c}})
    };
    let visible = ["budget epsilon", "budget beta", "budget alpha"];
    let all = search(criteria(json!({})), None).await;
    assert_eq!(bodies(&all["results"]), visible);
    assert_eq!(all["count"], 3, "{all}");
    assert!(all.get("next_batch").is_none());

    // One result per page: three pages, each counting 3, then no token.
    let mut seen = Vec::new();
    let mut next = None;
    for _ in 0..10 {
        let page = search(criteria(json!({"filter": {"limit": 1}})), next.clone()).await;
        assert_eq!(page["count"], 3, "{page}");
        seen.extend(bodies(&page["results"]));
        next = page["next_batch"].as_str().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    assert!(next.is_none(), "pagination did not end within 10 pages");
    assert_eq!(seen, visible);

    // Context around results and the state of a left room stop where bob
    // may stop reading.
    let with_context =
        search(criteria(json!({"event_context": {"before_limit": 5, "after_limit": 5}, "include_state": true})), None).await;
    let context_bodies = |n: usize, side: &str| -> Vec<String> {
        with_context["results"][n]["context"][side]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(bodies(&with_context["results"]), visible);
    assert!(context_bodies(0, "events_before").is_empty(), "delta came before bob joined the `joined` room");
    assert!(context_bodies(1, "events_after").is_empty(), "gamma came after bob left");
    assert_eq!(context_bodies(1, "events_before"), ["budget alpha"]);
    let shared_name = with_context["state"][&shared]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .map(|e| e["content"]["name"].clone());
    assert_eq!(shared_name, Some(json!("Old name")), "the state as bob left it");

    // Alice, joined everywhere she created, sees all of her rooms.
    let alice_all = alice.ok(Method::POST, "/search", Some(criteria(json!({})))).await;
    assert_eq!(alice_all["search_categories"]["room_events"]["count"], 5);

    // A forgotten room is not searched any more.
    bob.ok(Method::POST, &format!("/rooms/{shared}/forget"), Some(json!({}))).await;
    let after_forget = search(criteria(json!({})), None).await;
    assert_eq!(bodies(&after_forget["results"]), ["budget epsilon"]);
    assert_eq!(after_forget["count"], 1);
    server.stop().await.unwrap();
}

on_both_backends!(search_follows_history_visibility);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_can_search_everyone() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.user_directory.search_all_users = true).await.unwrap();
    let (_, alice, _) = register(&server.base_url, "alice").await;
    register(&server.base_url, "zed").await;
    let dir = post(&server.base_url, &alice, "/user_directory/search", json!({"search_term": "zed"})).await;
    assert_eq!(ids(&dir["results"], "user_id"), ["@zed:localhost"]);
    server.stop().await.unwrap();
}
