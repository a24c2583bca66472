//! U+0000 (NUL) in what clients store: refused where it enters, with the
//! same answer on both backends, and rows stored before that break no
//! other user's request (PostgreSQL refuses `\u0000` in JSON operations).

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{User, assert_error};

async fn nul_is_refused_wherever_clients_store_json(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;
    let carol = User::new(base, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat", "visibility": "public", "name": "Open"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let (me, nul) = (alice.id.clone(), "a\u{0}b");

    let refused: Vec<(Method, String, Value, &str)> = vec![
        // Profiles (display names are copied into member events).
        (Method::PUT, format!("/profile/{me}/displayname"), json!({"displayname": nul}), "M_BAD_JSON"),
        (Method::PUT, format!("/profile/{me}/org.example.field"), json!({"org.example.field": {"k": [nul]}}), "M_BAD_JSON"),
        // Push rules: pattern, rule id, actions.
        (
            Method::PUT,
            "/pushrules/global/content/org.example.nul".into(),
            json!({"pattern": nul, "actions": ["notify"]}),
            "M_BAD_JSON",
        ),
        (Method::PUT, "/pushrules/global/content/a%00b".into(), json!({"pattern": "x", "actions": ["notify"]}), "M_BAD_JSON"),
        (
            Method::PUT,
            "/pushrules/global/override/.m.rule.master/actions".into(),
            json!({"actions": [{"set_tweak": "sound", "value": nul}]}),
            "M_BAD_JSON",
        ),
        // Events: content (also in a key), type, state key, reasons.
        (Method::PUT, format!("/rooms/{room}/send/m.room.message/t1"), json!({"msgtype": "m.text", "body": nul}), "M_BAD_JSON"),
        (Method::PUT, format!("/rooms/{room}/send/org.example%00/t2"), json!({}), "M_INVALID_PARAM"),
        (Method::PUT, format!("/rooms/{room}/state/m.room.join_rules/"), json!({"join_rule": "public", nul: true}), "M_BAD_JSON"),
        (Method::PUT, format!("/rooms/{room}/state/m.room.topic/"), json!({"topic": nul}), "M_BAD_JSON"),
        (Method::PUT, format!("/rooms/{room}/state/org.example.state/k%00"), json!({}), "M_INVALID_PARAM"),
        (Method::POST, format!("/rooms/{room}/invite"), json!({"user_id": carol.id, "reason": nul}), "M_BAD_JSON"),
        (Method::POST, "/createRoom".into(), json!({"name": nul}), "M_BAD_JSON"),
        (
            Method::POST,
            "/createRoom".into(),
            json!({"initial_state": [{"type": "org.example.s", "state_key": "", "content": {"v": nul}}]}),
            "M_BAD_JSON",
        ),
        // Account data, tags, filters.
        (Method::PUT, format!("/user/{me}/account_data/org.example.cfg"), json!({"v": nul}), "M_BAD_JSON"),
        (Method::PUT, format!("/user/{me}/account_data/org.example%00"), json!({}), "M_INVALID_PARAM"),
        (Method::PUT, format!("/user/{me}/rooms/{room}/account_data/org.example.cfg"), json!({nul: 1}), "M_BAD_JSON"),
        (Method::PUT, format!("/user/{me}/rooms/{room}/tags/u.a%00b"), json!({}), "M_INVALID_PARAM"),
        (Method::PUT, format!("/user/{me}/rooms/{room}/tags/u.work"), json!({"note": nul}), "M_BAD_JSON"),
        (Method::POST, format!("/user/{me}/filter"), json!({"event_fields": [nul]}), "M_BAD_JSON"),
    ];
    for (method, path, body, errcode) in refused {
        let got = alice.call(method, &path, Some(body)).await;
        assert_eq!(got.0, 400, "{path}: {}", got.1);
        assert_error(&got, 400, errcode);
    }
    let redact_target = alice.say(&room, "t3", "to be redacted").await;
    assert_error(
        &alice.call(Method::PUT, &format!("/rooms/{room}/redact/{redact_target}/t4"), Some(json!({"reason": nul}))).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(&bob.call(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({"reason": nul}))).await, 400, "M_BAD_JSON");

    // Nothing was stored, and everyone's requests work as before.
    assert_error(&alice.call(Method::GET, &format!("/profile/{me}/displayname"), None).await, 404, "M_NOT_FOUND");
    assert_error(&alice.call(Method::GET, "/pushrules/global/content/org.example.nul", None).await, 404, "M_NOT_FOUND");
    alice.say(&room, "t5", "still here").await;
    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let found = carol.ok(Method::POST, "/user_directory/search", Some(json!({"search_term": "bob"}))).await;
    assert_eq!(found["results"][0]["user_id"], bob.id, "{found}");
    let listed = carol.ok(Method::GET, "/publicRooms", None).await;
    assert_eq!(listed["chunk"][0]["name"], "Open", "{listed}");
    server.stop().await.unwrap();
}

on_both_backends!(nul_is_refused_wherever_clients_store_json);

/// Rewrites a stored event's JSON in place, as if a server before the
/// check had stored `from` as `to` (PostgreSQL keeps `\u0000` in text as
/// those six characters, so such rows exist).
async fn rewrite_stored_event(server: &TestServer, backend: Backend, event_id: &str, from: &str, to: &str) {
    let sql = "UPDATE events SET json = replace(json, $1, $2) WHERE event_id = $3";
    let changed = match backend {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(server.data_dir().join("chancery.db")).unwrap();
            conn.execute(sql, [from, to, event_id]).unwrap() as u64
        }
        Backend::Postgres => {
            let url = server.config.database_url.as_deref().unwrap();
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            let driver = tokio::spawn(connection);
            let changed = client.execute(sql, &[&from, &to, &event_id]).await.unwrap();
            drop(client);
            let _ = driver.await;
            changed
        }
    };
    assert_eq!(changed, 1, "{event_id} not rewritten");
}

async fn stored_nul_breaks_no_other_users_request(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;
    let carol = User::new(base, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let join_rules = alice.ok(Method::GET, &format!("/rooms/{room}/state"), None).await;
    let join_rules = join_rules.as_array().unwrap().iter().find(|e| e["type"] == "m.room.join_rules").unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // What a server before the check let clients store: bob's push rules
    // and display name, and the room's join rules, each holding a NUL.
    let store = chancery_server::open_store(&server.config).await.unwrap();
    let rules = json!({"content": [
        {"rule_id": "nul", "pattern": "\u{0}", "actions": ["notify"], "default": false, "enabled": true}
    ]});
    let limits = chancery_store::AccountDataLimits { max_entries: 10, max_content_bytes: 65_536, max_total_bytes: 65_536 };
    store.set_push_rules(&bob.id, &rules.to_string(), limits).await.unwrap();
    store.set_profile_field(&bob.id, "displayname", &json!("Bob\u{0}"), 65_536).await.unwrap();
    store.close().await;
    rewrite_stored_event(
        &server,
        backend,
        &join_rules,
        r#""content":{"join_rule":"public"}"#,
        r#""content":{"join_rule":"public","org.example.note":"\u0000"}"#,
    )
    .await;

    // Every send in bob's rooms reads his push rules; every membership
    // change those of members with rules of their own.
    alice.say(&room, "t1", "hello").await;
    carol.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    carol.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    // The user directory reads display names and join rules.
    for term in ["bob", "alice", "b"] {
        carol.ok(Method::POST, "/user_directory/search", Some(json!({"search_term": term}))).await;
    }
    let found = alice.ok(Method::POST, "/user_directory/search", Some(json!({"search_term": "bob"}))).await;
    assert_eq!(found["results"][0]["user_id"], bob.id, "{found}");
    alice.ok(Method::GET, "/publicRooms", None).await;
    alice.sync("timeout=0").await;

    // Bob himself: his rules still read and apply, his display name is
    // left out of a new member event, and he can repair both.
    let rule = bob.ok(Method::GET, "/pushrules/global/content/nul", None).await;
    assert_eq!(rule["pattern"], "\u{0}", "{rule}");
    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let member = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}", bob.id), None).await;
    assert_eq!(member, json!({"membership": "join"}));
    bob.ok(Method::PUT, &format!("/profile/{}/displayname", bob.id), Some(json!({"displayname": "Bob"}))).await;
    bob.ok(Method::DELETE, "/pushrules/global/content/nul", None).await;
    server.stop().await.unwrap();
}

on_both_backends!(stored_nul_breaks_no_other_users_request);
