//! Bad input gets the Matrix error the spec names, with the right status.

use chancery_testkit::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{assert_error, call, http, register};

/// One row: method, path (`{me}` = the caller's user id), token?, body, status, errcode.
struct Case {
    method: Method,
    path: &'static str,
    auth: bool,
    body: Body,
    status: u16,
    errcode: &'static str,
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str),
}

fn case(method: Method, path: &'static str, auth: bool, body: Body, status: u16, errcode: &'static str) -> Case {
    Case { method, path, auth, body, status, errcode }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_matrix_errors() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.max_request_body_bytes = 4096;
        c.reserved_usernames = vec!["admin".into()];
    })
    .await
    .unwrap();
    let base = &server.base_url;
    let (me, token, _) = register(base, "carol").await;
    register(base, "dave").await;
    use Body::*;
    use Method as M;
    let big = "x".repeat(70_000);
    let cases = vec![
        case(M::GET, "/_matrix/client/v3/no/such/endpoint", false, None, 404, "M_UNRECOGNIZED"),
        case(M::GET, "/totally/unknown", false, None, 404, "M_UNRECOGNIZED"),
        case(M::DELETE, "/_matrix/client/v3/login", false, None, 405, "M_UNRECOGNIZED"),
        case(M::PUT, "/_matrix/client/v3/account/whoami", true, Json(json!({})), 405, "M_UNRECOGNIZED"),
        case(M::POST, "/_matrix/client/v3/login", false, Raw("{not json"), 400, "M_NOT_JSON"),
        case(M::POST, "/_matrix/client/v3/register", false, Raw("<xml/>"), 400, "M_NOT_JSON"),
        case(M::POST, "/_matrix/client/v3/login", false, Json(json!({"type": "m.login.password"})), 400, "M_BAD_JSON"),
        // ruma's LoginInfo indexes a missing `type` key: a panic, caught.
        case(M::POST, "/_matrix/client/v3/login", false, Json(json!({})), 400, "M_BAD_JSON"),
        case(M::POST, "/_matrix/client/v3/login", false, Json(json!({"type": 7})), 400, "M_BAD_JSON"),
        case(M::POST, "/_matrix/client/v3/login", false, Json(json!(["a list"])), 400, "M_BAD_JSON"),
        case(M::POST, "/_matrix/client/v3/register", false, Json(json!({"username": 42})), 400, "M_BAD_JSON"),
        case(M::POST, "/_matrix/client/v3/login", false, Json(json!({"type": "m.login.token", "token": "x"})), 400, "M_UNKNOWN"),
        case(
            M::POST,
            "/_matrix/client/v3/login",
            false,
            Json(
                json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}, "password": "wrong password"}),
            ),
            403,
            "M_FORBIDDEN",
        ),
        case(
            M::POST,
            "/_matrix/client/v3/login",
            false,
            Json(
                json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "whatever1"}),
            ),
            403,
            "M_FORBIDDEN",
        ),
        case(M::POST, "/_matrix/client/v3/register", false, Json(json!({"pad": "y".repeat(5000)})), 413, "M_TOO_LARGE"),
        case(M::GET, "/_matrix/client/v3/account/whoami", false, None, 401, "M_MISSING_TOKEN"),
        case(M::GET, "/_matrix/client/v3/devices", false, None, 401, "M_MISSING_TOKEN"),
        case(M::GET, "/_matrix/client/v3/capabilities", false, None, 401, "M_MISSING_TOKEN"),
        case(M::GET, "/_matrix/client/v3/profile/not-a-user-id", false, None, 400, "M_INVALID_PARAM"),
        case(M::GET, "/_matrix/client/v3/profile/@ghost:localhost", false, None, 404, "M_NOT_FOUND"),
        case(M::GET, "/_matrix/client/v3/profile/{me}/m.tz", false, None, 404, "M_NOT_FOUND"),
        case(
            M::PUT,
            "/_matrix/client/v3/profile/@dave:localhost/displayname",
            true,
            Json(json!({"displayname": "Not Dave"})),
            403,
            "M_FORBIDDEN",
        ),
        case(M::PUT, "/_matrix/client/v3/profile/{me}/displayname", true, Json(json!({"displayname": 5})), 400, "M_BAD_JSON"),
        case(M::PUT, "/_matrix/client/v3/profile/{me}/displayname", true, Json(json!({"other": "x"})), 400, "M_MISSING_PARAM"),
        case(M::PUT, "/_matrix/client/v3/profile/{me}/displayname", true, Raw("nope"), 400, "M_NOT_JSON"),
        case(
            M::PUT,
            "/_matrix/client/v3/profile/{me}/avatar_url",
            true,
            Json(json!({"avatar_url": "https://example.org/a.png"})),
            400,
            "M_INVALID_PARAM",
        ),
        case(
            M::PUT,
            "/_matrix/client/v3/profile/{me}/displayname",
            true,
            Json(json!({"displayname": "d".repeat(300)})),
            400,
            "M_INVALID_PARAM",
        ),
        case(M::GET, "/_matrix/client/v3/devices/NOSUCHDEVICE", true, None, 404, "M_NOT_FOUND"),
        case(M::PUT, "/_matrix/client/v3/devices/NOSUCHDEVICE", true, Json(json!({"display_name": "x"})), 404, "M_NOT_FOUND"),
        case(M::DELETE, "/_matrix/client/v3/devices/NOSUCHDEVICE", true, Json(json!({})), 404, "M_NOT_FOUND"),
        case(
            M::POST,
            "/_matrix/client/v3/register",
            false,
            Json(json!({"username": "Bad Name!", "password": "long enough"})),
            400,
            "M_INVALID_USERNAME",
        ),
        case(
            M::POST,
            "/_matrix/client/v3/register",
            false,
            Json(json!({"username": "_bridge", "password": "long enough"})),
            400,
            "M_INVALID_USERNAME",
        ),
        case(
            M::POST,
            "/_matrix/client/v3/register",
            false,
            Json(json!({"username": "admin", "password": "long enough"})),
            400,
            "M_EXCLUSIVE",
        ),
        case(
            M::POST,
            "/_matrix/client/v3/register",
            false,
            Json(json!({"username": "carol", "password": "long enough"})),
            400,
            "M_USER_IN_USE",
        ),
        case(
            M::POST,
            "/_matrix/client/v3/register",
            false,
            Json(json!({"username": "erin", "password": "short"})),
            400,
            "M_WEAK_PASSWORD",
        ),
        case(M::POST, "/_matrix/client/v3/register?kind=guest", false, Json(json!({})), 403, "M_GUEST_ACCESS_FORBIDDEN"),
        case(M::GET, "/_matrix/client/v3/register/available?username=Bad%20Name", false, None, 400, "M_INVALID_USERNAME"),
        case(M::GET, "/_matrix/client/v3/register/available?username=carol", false, None, 400, "M_USER_IN_USE"),
        case(
            M::POST,
            "/_matrix/client/v3/login",
            false,
            Json(
                json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}, "password": crate::common::PASSWORD, "device_id": "NUL\u{0}"}),
            ),
            400,
            "M_INVALID_PARAM",
        ),
        case(M::POST, "/_matrix/client/v3/refresh", false, Json(json!({})), 400, "M_BAD_JSON"),
        case(M::POST, "/_matrix/client/v3/delete_devices", true, Json(json!({"devices": "not a list"})), 400, "M_BAD_JSON"),
    ];
    for c in cases {
        let url = format!("{base}{}", c.path.replace("{me}", &me));
        let mut req = http().request(c.method.clone(), &url);
        if c.auth {
            req = req.bearer_auth(&token);
        }
        req = match c.body {
            None => req,
            Json(v) => req.json(&v),
            Raw(s) => req.header("content-type", "application/json").body(s),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        assert_error(&(status, body), c.status, c.errcode);
    }

    // A profile over 64 KiB (spec) and a key over 255 bytes; the body limit
    // is raised for this one by a second server below, so here the request
    // is refused at the door instead.
    let url = format!("{base}/_matrix/client/v3/profile/{me}/org.example.big");
    assert_error(&call(Method::PUT, &url, Some(&token), Some(json!({"org.example.big": big}))).await, 413, "M_TOO_LARGE");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_limits() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = &server.base_url;
    let (me, token, _) = register(base, "frank").await;
    let field = |key: &str| format!("{base}/_matrix/client/v3/profile/{me}/{key}");
    let long_key = "k".repeat(256);
    assert_error(
        &call(Method::PUT, &field(&long_key), Some(&token), Some(json!({ long_key.clone(): 1 }))).await,
        400,
        "M_KEY_TOO_LARGE",
    );
    let half = "x".repeat(40_000);
    let (status, _) = call(Method::PUT, &field("org.example.a"), Some(&token), Some(json!({"org.example.a": half}))).await;
    assert_eq!(status, 200);
    let over = call(Method::PUT, &field("org.example.b"), Some(&token), Some(json!({"org.example.b": half}))).await;
    assert_error(&over, 400, "M_PROFILE_TOO_LARGE");
    // Nothing of the refused write was kept.
    let (_, profile) = call(Method::GET, &format!("{base}/_matrix/client/v3/profile/{me}"), None, None).await;
    assert!(profile.get("org.example.b").is_none());
    assert_eq!(profile["org.example.a"].as_str().map(str::len), Some(40_000));
    // Set, read and delete a display name and a custom field.
    let (status, _) = call(Method::PUT, &field("displayname"), Some(&token), Some(json!({"displayname": "Frank"}))).await;
    assert_eq!(status, 200);
    let (status, _) =
        call(Method::PUT, &field("avatar_url"), Some(&token), Some(json!({"avatar_url": "mxc://localhost/abc"}))).await;
    assert_eq!(status, 200);
    let (_, got) = call(Method::GET, &field("displayname"), None, None).await;
    assert_eq!(got, json!({"displayname": "Frank"}));
    let (status, _) = call(Method::DELETE, &field("org.example.a"), Some(&token), None).await;
    assert_eq!(status, 200);
    let (_, profile) = call(Method::GET, &format!("{base}/_matrix/client/v3/profile/{me}"), None, None).await;
    assert_eq!(profile, json!({"displayname": "Frank", "avatar_url": "mxc://localhost/abc"}));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_registration_are_rate_limited() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.login_per_address.burst = 3;
        c.rate_limits.login_per_address.per_second = 0.01;
        c.rate_limits.login_per_account.burst = 100;
        c.rate_limits.register_per_address.burst = 20;
    })
    .await
    .unwrap();
    let base = &server.base_url;
    register(base, "grace").await;
    for _ in 0..3 {
        let got = crate::common::login(base, "grace", "wrong password").await;
        assert_eq!(got.0, StatusCode::FORBIDDEN);
    }
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "grace"}, "password": "x"});
    let resp = http().post(format!("{base}/_matrix/client/v3/login")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    server.stop().await.unwrap();

    // Per account: many addresses cannot hammer one account either.
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.login_per_account.burst = 2;
        c.rate_limits.login_per_account.per_second = 0.01;
        c.rate_limits.register_per_address.burst = 20;
    })
    .await
    .unwrap();
    register(&server.base_url, "heidi").await;
    for _ in 0..2 {
        crate::common::login(&server.base_url, "heidi", "wrong password").await;
    }
    assert_error(&crate::common::login(&server.base_url, "@heidi:localhost", "wrong").await, 429, "M_LIMIT_EXCEEDED");
    server.stop().await.unwrap();
}

/// One user's flood of events, rooms, invites or receipts is theirs
/// alone: 429 with a wait for them, nothing for anyone else, nothing for
/// server admins, and a retried send still gets its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_actions_are_rate_limited_per_user() {
    use crate::common::User;
    let slow = chancery_service::RateLimit { per_second: 0.001, burst: 3 };
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.register_per_address.burst = 20;
        c.rate_limits.events_per_user = slow;
        c.rate_limits.rooms_per_user = chancery_service::RateLimit { burst: 2, ..slow };
        c.rate_limits.invites_per_user = chancery_service::RateLimit { burst: 2, ..slow };
        c.rate_limits.receipts_per_user = chancery_service::RateLimit { burst: 2, ..slow };
    })
    .await
    .unwrap();
    let base = &server.base_url;
    let limited = |got: &(StatusCode, Value)| {
        assert_error(got, 429, "M_LIMIT_EXCEEDED");
        assert!(got.1["retry_after_ms"].as_u64().unwrap() > 0, "{}", got.1);
    };
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;
    let carol = User::new(base, "carol").await;

    // Rooms: two, then a wait.
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    alice.create_room(json!({})).await;
    limited(&alice.call(Method::POST, "/createRoom", Some(json!({}))).await);
    let upgrade = json!({"new_version": "11"});
    limited(&alice.call(Method::POST, &format!("/rooms/{room}/upgrade"), Some(upgrade)).await);
    bob.create_room(json!({})).await;

    // Invites: two, then a wait.
    for who in [&bob, &carol] {
        alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": who.id}))).await;
    }
    let dave = User::new(base, "dave").await;
    limited(&alice.call(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": dave.id}))).await);
    bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;

    // Events: three of any kind, then a wait; a retry of a send that went
    // through is answered with its event.
    let first = alice.say(&room, "t1", "one").await;
    alice.say(&room, "t2", "two").await;
    alice.ok(Method::PUT, &format!("/rooms/{room}/state/org.example.s/k"), Some(json!({"v": 1}))).await;
    limited(&alice.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/t3"), Some(json!({"body": "3"}))).await);
    limited(&alice.call(Method::PUT, &format!("/rooms/{room}/state/org.example.s/k"), Some(json!({"v": 2}))).await);
    limited(&alice.call(Method::PUT, &format!("/rooms/{room}/redact/{first}/r1"), Some(json!({}))).await);
    let retried = alice.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/t1"), Some(json!({"body": "one"}))).await;
    assert_eq!(retried, (StatusCode::OK, json!({"event_id": first})));
    let bobs = bob.say(&room, "b1", "bob is not limited by alice").await;

    // Receipts and read markers share one bucket.
    bob.ok(Method::POST, &format!("/rooms/{room}/receipt/m.read/{first}"), Some(json!({}))).await;
    bob.ok(Method::POST, &format!("/rooms/{room}/read_markers"), Some(json!({"m.fully_read": first}))).await;
    limited(&bob.call(Method::POST, &format!("/rooms/{room}/receipt/m.read/{bobs}"), Some(json!({}))).await);
    limited(&bob.call(Method::POST, &format!("/rooms/{room}/read_markers"), Some(json!({"m.read": bobs}))).await);

    // An outsider's send is refused as forbidden (before the room's write
    // lock), and still counts against them.
    for txn in ["o1", "o2", "o3"] {
        let got = dave.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/{txn}"), Some(json!({}))).await;
        assert_error(&got, 403, "M_FORBIDDEN");
    }
    limited(&dave.call(Method::PUT, &format!("/rooms/{room}/send/m.room.message/o4"), Some(json!({}))).await);

    // Server admins run imports and bots: not limited.
    let admin = User::admin(&server, "operator").await;
    let own = admin.create_room(json!({})).await;
    for i in 0..5 {
        admin.create_room(json!({})).await;
        admin.say(&own, &format!("a{i}"), "unlimited").await;
    }
    server.stop().await.unwrap();
}

/// One user's pile of waiting `/sync` long-polls is bounded: past
/// MAX_LONG_POLLS_PER_USER, a new one is 429; other users are not
/// affected, and polls whose clients went away free their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_per_user_are_bounded() {
    use crate::common::User;
    use chancery_proto::limits::MAX_LONG_POLLS_PER_USER;
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let bob_since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    // Four more than the bound at once: the four last to arrive are
    // refused, the others wait.
    let extra = 4;
    let mut polls: Vec<_> = (0..MAX_LONG_POLLS_PER_USER + extra)
        .map(|_| {
            let url = alice.url(&format!("/sync?since={since}&timeout=60000"));
            let token = alice.token.clone();
            tokio::spawn(async move { call(Method::GET, &url, Some(&token), None).await })
        })
        .collect();
    let mut refused = Vec::new();
    for _ in 0..200 {
        let (done, waiting): (Vec<_>, Vec<_>) = polls.into_iter().partition(|p| p.is_finished());
        polls = waiting;
        for poll in done {
            refused.push(poll.await.unwrap());
        }
        if refused.len() >= extra {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refused.len(), extra, "{refused:?}");
    for got in &refused {
        assert_error(got, 429, "M_LIMIT_EXCEEDED");
    }
    let short = |user: &User, since: &str| {
        let url = user.url(&format!("/sync?since={since}&timeout=50"));
        let token = user.token.clone();
        async move { call(Method::GET, &url, Some(&token), None).await }
    };
    assert_error(&short(&alice, &since).await, 429, "M_LIMIT_EXCEEDED");
    assert_eq!(short(&bob, &bob_since).await.0, 200, "bob's sync does not count alice's");
    // Alice's clients give up: their places free up.
    for poll in &polls {
        poll.abort();
    }
    let mut freed = false;
    for _ in 0..100 {
        if short(&alice, &since).await.0 == StatusCode::OK {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(freed, "the polls of clients that went away still hold their places");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_cors_and_health() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.public_baseurl = Some("https://matrix.example.gov".into());
        c.federation_address = Some("matrix.example.gov:443".into());
    })
    .await
    .unwrap();
    let base = &server.base_url;
    let (status, versions) = call(Method::GET, &format!("{base}/_matrix/client/versions"), None, None).await;
    assert_eq!(status, 200);
    assert!(versions["versions"].as_array().unwrap().contains(&json!("v1.19")));
    let (_, wk) = call(Method::GET, &format!("{base}/.well-known/matrix/client"), None, None).await;
    assert_eq!(wk, json!({"m.homeserver": {"base_url": "https://matrix.example.gov"}}));
    let (_, wk) = call(Method::GET, &format!("{base}/.well-known/matrix/server"), None, None).await;
    assert_eq!(wk, json!({"m.server": "matrix.example.gov:443"}));
    let (_, flows) = call(Method::GET, &format!("{base}/_matrix/client/v3/login"), None, None).await;
    assert_eq!(flows, json!({"flows": [{"type": "m.login.password"}]}));

    let (_, token, _) = register(base, "ivan").await;
    let (status, caps) = call(Method::GET, &format!("{base}/_matrix/client/v3/capabilities"), Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], true);
    assert_eq!(caps["capabilities"]["m.3pid_changes"]["enabled"], false);

    // Element Web on another origin: preflight and the headers on answers.
    let preflight = http()
        .request(Method::OPTIONS, format!("{base}/_matrix/client/v3/login"))
        .header("origin", "https://app.element.io")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    for header in ["x-requested-with", "content-type", "authorization"] {
        assert!(allowed.contains(header), "{allowed}");
    }
    let resp = http().get(format!("{base}/_matrix/client/nope")).header("origin", "https://app.element.io").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    let health = http().get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // Metrics are off unless configured, and never on the client port.
    assert!(server.metrics_url().is_none());
    assert_error(&call(Method::GET, &format!("{base}/metrics"), None, None).await, 404, "M_UNRECOGNIZED");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_when_configured() {
    let server =
        TestServer::start_with(Backend::Sqlite, |c| c.metrics.listen = Some("127.0.0.1:0".parse().unwrap())).await.unwrap();
    register(&server.base_url, "judy").await;
    let text = http().get(server.metrics_url().unwrap()).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"chancery_http_requests_total{method="POST",endpoint="/_matrix/client/v3/register",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains("chancery_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("chancery_db_pool_connections"), "{text}");
    assert!(text.lines().any(|l| l == "chancery_sync_long_polls_waiting 0"), "{text}");
    let rss_line = text.lines().find(|l| l.starts_with("chancery_process_resident_memory_bytes ")).expect("rss");
    let rss: u64 = rss_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(rss > 1_000_000, "{rss_line}");
    server.stop().await.unwrap();
}

/// An inline `/sync` filter is read on every pass of the sync: it is
/// bounded like a stored one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_sync_filters_are_bounded() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = &server.base_url;
    let (_, token, _) = register(base, "karl").await;
    let sync_with = |filter: Value| {
        let url = reqwest::Url::parse_with_params(
            &format!("{base}/_matrix/client/v3/sync"),
            &[("filter", filter.to_string()), ("timeout", "0".to_owned())],
        )
        .unwrap();
        let token = token.clone();
        async move { call(Method::GET, url.as_str(), Some(&token), None).await }
    };
    let types = |n: usize| json!({"room": {"timeline": {"not_types": (0..n).map(|i| format!("org.example.type.{i:05}")).collect::<Vec<_>>()}}});
    assert_eq!(sync_with(types(10)).await.0, 200);
    assert_error(&sync_with(types(1_000)).await, 413, "M_TOO_LARGE");
    server.stop().await.unwrap();
}

/// Numbers at the edges of what JSON clients send (past i64, tiny and huge
/// exponents) in custom push rule actions read back as they were stored,
/// on both backends. Found by `scripts/fuzz --postgres`: PostgreSQL's
/// `jsonb` wrote such a number back in a form the rule set's reader could
/// not parse ("number out of range"), and every push rule request of the
/// user failed with 500 from then on.
async fn push_rule_numbers_read_back(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let (_, token, _) = register(&server.base_url, "numbers").await;
    let rule = format!("{}/_matrix/client/v3/pushrules/global/content/edge", server.base_url);
    let (status, body) = call(Method::PUT, &rule, Some(&token), Some(json!({"pattern": "edge", "actions": ["notify"]}))).await;
    assert_eq!(status, 200, "{body}");
    let numbers = [
        "-2671115983894042279673856",
        "9.46442809221581e-258",
        "5e-324",
        "1.7976931348623157e308",
        "-1.401298464324817e-45",
        "3.99144745841383e+16",
        "0.3333333333333333",
        "-2.220446049250313e-16",
        "6.103515625e-05",
        "87178291201",
    ];
    let actions = format!(r#"{{"actions": ["notify", {{"edge": [{}]}}]}}"#, numbers.join(", "));
    let resp = http()
        .put(format!("{rule}/actions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(actions)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    for path in ["/pushrules/", "/pushrules/global/", "/pushrules/global/content/edge", "/pushrules/global/content/edge/actions"]
    {
        let (status, body) = call(Method::GET, &format!("{}/_matrix/client/v3{path}", server.base_url), Some(&token), None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, actions) = call(Method::GET, &format!("{rule}/actions"), Some(&token), None).await;
    let stored = actions["actions"][1]["edge"].as_array().expect("the custom action back").clone();
    assert_eq!(stored.len(), numbers.len());
    for (got, sent) in stored.iter().zip(numbers) {
        let sent: f64 = sent.parse().unwrap();
        assert_eq!(got.as_f64(), Some(sent), "{got} read back for {sent}");
    }
    server.stop().await.unwrap();
}

on_both_backends!(push_rule_numbers_read_back);
