//! Registration modes, interactive auth and registration tokens over HTTP.

use chancery_server::config::RegistrationMode;
use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::json;

use crate::common::{PASSWORD, assert_error, call, login};

async fn token_registration(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.registration = RegistrationMode::Token).await.unwrap();
    let base = &server.base_url;
    let store = chancery_server::open_store(&server.config).await.unwrap();
    let accounts = chancery_server::components(&server.config, store.clone()).unwrap().accounts;
    let token = accounts
        .create_registration_token(chancery_service::NewRegistrationToken {
            token: Some("invite-2026".into()),
            uses_allowed: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let validity = |t: &str| format!("{base}/_matrix/client/v1/register/m.login.registration_token/validity?token={t}");
    assert_eq!(call(Method::GET, &validity(&token.token), None, None).await.1, json!({"valid": true}));
    assert_eq!(call(Method::GET, &validity("nope"), None, None).await.1, json!({"valid": false}));

    let url = format!("{base}/_matrix/client/v3/register");
    let start = call(Method::POST, &url, None, Some(json!({"username": "kim", "password": PASSWORD}))).await;
    assert_eq!(start.0, 401);
    assert_eq!(start.1["flows"], json!([{"stages": ["m.login.registration_token"]}]));
    let session = start.1["session"].as_str().unwrap().to_owned();

    // A dummy stage is not part of this flow; a wrong token is refused and
    // the session goes on.
    let dummy = json!({"username": "kim", "password": PASSWORD, "auth": {"type": "m.login.dummy", "session": session}});
    let got = call(Method::POST, &url, None, Some(dummy)).await;
    assert_eq!(got.0, 401);
    assert_eq!(got.1["errcode"], "M_FORBIDDEN");
    let wrong = json!({"username": "kim", "password": PASSWORD, "auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}});
    let got = call(Method::POST, &url, None, Some(wrong)).await;
    assert_eq!((got.0.as_u16(), got.1["errcode"].as_str()), (401, Some("M_FORBIDDEN")));
    assert_eq!(got.1["session"], session.as_str());
    assert_eq!(got.1["completed"], json!([]));

    let right = json!({"username": "kim", "password": PASSWORD, "inhibit_login": true,
        "auth": {"type": "m.login.registration_token", "token": "invite-2026", "session": session}});
    let (status, body) = call(Method::POST, &url, None, Some(right)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@kim:localhost");
    assert!(body.get("access_token").is_none(), "inhibit_login gives no token: {body}");
    assert_eq!(login(base, "kim", PASSWORD).await.0, 200);

    // The token is used up.
    assert_eq!(call(Method::GET, &validity("invite-2026"), None, None).await.1, json!({"valid": false}));
    let start = call(Method::POST, &url, None, Some(json!({"username": "lee", "password": PASSWORD}))).await;
    let session = start.1["session"].as_str().unwrap();
    let again = json!({"username": "lee", "password": PASSWORD, "auth": {"type": "m.login.registration_token", "token": "invite-2026", "session": session}});
    assert_eq!(call(Method::POST, &url, None, Some(again)).await.1["errcode"], "M_FORBIDDEN");
    let listed = accounts.registration_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].completed, 1);
    store.close().await;
    server.stop().await.unwrap();
}

on_both_backends!(token_registration);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_disabled_by_default() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.registration = RegistrationMode::Disabled).await.unwrap();
    let base = &server.base_url;
    let got = call(
        Method::POST,
        &format!("{base}/_matrix/client/v3/register"),
        None,
        Some(json!({"username": "x", "password": PASSWORD})),
    )
    .await;
    assert_error(&got, 403, "M_FORBIDDEN");
    assert_error(
        &call(Method::GET, &format!("{base}/_matrix/client/v3/register/available?username=x"), None, None).await,
        403,
        "M_FORBIDDEN",
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uia_sessions_belong_to_one_request_and_user() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = &server.base_url;
    let (_, mallory_token, _) = crate::common::register(base, "mallory").await;
    let (_, nina_token, _) = crate::common::register(base, "nina").await;
    // Nina starts a deactivation; Mallory cannot finish it with her session.
    let deactivate = format!("{base}/_matrix/client/v3/account/deactivate");
    let start = call(Method::POST, &deactivate, Some(&nina_token), Some(json!({}))).await;
    assert_eq!(start.0, 401);
    assert_eq!(start.1["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = start.1["session"].as_str().unwrap();
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mallory"}, "password": PASSWORD, "session": session}});
    assert_error(&call(Method::POST, &deactivate, Some(&mallory_token), Some(auth)).await, 403, "M_FORBIDDEN");
    // Nor can Nina use it for another operation.
    let password = format!("{base}/_matrix/client/v3/account/password");
    let auth = json!({"new_password": "another one 1", "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nina"}, "password": PASSWORD, "session": session}});
    assert_error(&call(Method::POST, &password, Some(&nina_token), Some(auth)).await, 403, "M_FORBIDDEN");
    // A wrong password is a 401 with the error and the same session.
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nina"}, "password": "wrong", "session": session}});
    let got = call(Method::POST, &deactivate, Some(&nina_token), Some(auth)).await;
    assert_eq!((got.0.as_u16(), got.1["errcode"].as_str(), got.1["session"].as_str()), (401, Some("M_FORBIDDEN"), Some(session)));
    // Naming another user with the right password of the caller fails too.
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mallory"}, "password": PASSWORD, "session": session}});
    assert_eq!(call(Method::POST, &deactivate, Some(&nina_token), Some(auth)).await.0, 401);
    // Nina is still there.
    assert_eq!(login(base, "nina", PASSWORD).await.0, 200);
    server.stop().await.unwrap();
}

/// Two registrations of one name race: both complete their interactive
/// auth, one takes the name, the other is told it is taken. That client
/// picks another name and resends with just its session: the session is
/// complete, so the registration finishes instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_session_finishes_on_a_session_only_retry() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let url = format!("{}/_matrix/client/v3/register", server.base_url);
    let start = |name: String| {
        let url = url.clone();
        async move {
            let (status, body) = call(Method::POST, &url, None, Some(json!({"username": name, "password": PASSWORD}))).await;
            assert_eq!(status, 401, "{body}");
            body["session"].as_str().unwrap().to_owned()
        }
    };
    let dummy = |name: String, session: String| {
        let url = url.clone();
        async move {
            let body = json!({"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy", "session": session}});
            call(Method::POST, &url, None, Some(body)).await
        }
    };
    // The race is lost after auth when both requests pass the name check
    // before either creates the account (the password hash in between
    // takes milliseconds); a loser refused at the name check says nothing.
    let mut finished = false;
    for attempt in 0..10 {
        let name = format!("race{attempt}");
        let (a, b) = tokio::join!(start(name.clone()), start(name.clone()));
        let (first, second) = tokio::join!(dummy(name.clone(), a.clone()), dummy(name.clone(), b.clone()));
        let loser = match (first.0.as_u16(), second.0.as_u16()) {
            (200, 400) => b,
            (400, 200) => a,
            other => panic!("one registration wins, one loses: {other:?} {first:?} {second:?}"),
        };
        let retry = json!({"username": format!("{name}b"), "password": PASSWORD, "auth": {"session": loser}});
        let (status, body) = call(Method::POST, &url, None, Some(retry)).await;
        if status == 200 {
            assert_eq!(body["user_id"], format!("@{name}b:localhost"));
            finished = true;
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["completed"], json!([]), "a completed session must finish, not restart: {body}");
    }
    assert!(finished, "no attempt lost the race after its interactive auth");
    server.stop().await.unwrap();
}

/// Calls of a guarded operation without auth neither pile up sessions nor
/// go unbounded: the user's open session is answered again, and the calls
/// are rate-limited per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uia_sessions_are_reused_and_calls_rate_limited() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.uia_per_account.burst = 6;
        c.rate_limits.uia_per_account.per_second = 0.01;
    })
    .await
    .unwrap();
    let base = &server.base_url;
    let (_, token, _) = crate::common::register(base, "olga").await;
    let delete = format!("{base}/_matrix/client/v3/delete_devices");
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let (status, body) = call(Method::POST, &delete, Some(&token), Some(json!({"devices": []}))).await;
        assert_eq!(status, 401, "{body}");
        sessions.push(body["session"].as_str().unwrap().to_owned());
    }
    assert!(sessions.iter().all(|s| *s == sessions[0]), "one open session, answered again: {sessions:?}");
    assert_error(&call(Method::POST, &delete, Some(&token), Some(json!({"devices": []}))).await, 429, "M_LIMIT_EXCEEDED");
    server.stop().await.unwrap();
}
