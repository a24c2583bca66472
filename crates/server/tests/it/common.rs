//! Plain-HTTP helpers shared by the tests.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().unwrap()
}

/// A request with an optional access token and JSON body.
pub fn request(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> reqwest::RequestBuilder {
    let mut req = http().request(method, url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req
}

/// Sends a request and returns the status and the JSON body (`Null` if the
/// body is not JSON).
pub async fn call(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let resp = request(method, url, token, body).send().await.expect("request sent");
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Registers `name` through the dummy UIA flow; returns (user_id, access_token, device_id).
pub async fn register(base: &str, name: &str) -> (String, String, String) {
    let url = format!("{base}/_matrix/client/v3/register");
    let (status, body) = call(Method::POST, &url, None, Some(json!({"username": name, "password": PASSWORD}))).await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    let auth = json!({"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy", "session": session}});
    let (status, body) = call(Method::POST, &url, None, Some(auth)).await;
    assert_eq!(status, 200, "{body}");
    (
        body["user_id"].as_str().unwrap().into(),
        body["access_token"].as_str().unwrap().into(),
        body["device_id"].as_str().unwrap().into(),
    )
}

pub async fn login(base: &str, name: &str, password: &str) -> (StatusCode, Value) {
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": password});
    call(Method::POST, &format!("{base}/_matrix/client/v3/login"), None, Some(body)).await
}

/// Asserts a Matrix error answer.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: u16, errcode: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["errcode"], errcode, "{}", got.1);
    assert!(got.1["error"].is_string(), "{}", got.1);
}

/// Sends a request that must succeed; returns the JSON body.
pub async fn ok(method: Method, url: String, token: &str, body: Option<Value>) -> Value {
    let (status, body) = call(method, &url, Some(token), body).await;
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// Turns on the Prometheus listener (loopback, any port), which
/// [`wait_for_parked_polls`] reads: for `TestServer::start_with`.
pub fn with_metrics(config: &mut chancery_server::Config) {
    config.metrics.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// Waits until exactly `count` `/sync` long-polls are parked on `server`
/// waiting for news (its `chancery_sync_long_polls_waiting` gauge), so
/// that what a test does next happens while they wait and must wake them.
/// Polls every 5 ms for at most 10 s; fails if the count is not reached.
/// The server needs [`with_metrics`].
pub async fn wait_for_parked_polls(server: &chancery_testkit::TestServer, count: usize) {
    let url = server.metrics_url().expect("the server was started with_metrics");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut parked = None;
    while std::time::Instant::now() < deadline {
        let text = http().get(&url).send().await.expect("metrics answer").text().await.expect("metrics text");
        parked = text.lines().find_map(|l| l.strip_prefix("chancery_sync_long_polls_waiting ")).and_then(|v| v.parse().ok());
        if parked == Some(count) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{count} long-polls never waited on {url} within 10 s (last seen: {parked:?})");
}

/// Percent-encodes a query parameter value (filters are JSON).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A registered user driven over plain HTTP.
pub struct User {
    pub base: String,
    pub token: String,
    pub id: String,
}

impl User {
    pub async fn new(base: &str, name: &str) -> User {
        let (id, token, _) = register(base, name).await;
        User { base: base.into(), token, id }
    }
    /// An account the operator created as a server admin (as `chancery
    /// create-user --admin` does), logged in.
    pub async fn admin(server: &chancery_testkit::TestServer, name: &str) -> User {
        let store = chancery_server::open_store(&server.config).await.unwrap();
        let accounts = chancery_server::components(&server.config, store.clone()).unwrap().accounts;
        accounts.create_user(name, Some(PASSWORD.into()), true).await.unwrap();
        store.close().await;
        let (status, body) = login(&server.base_url, name, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        User {
            base: server.base_url.clone(),
            token: body["access_token"].as_str().unwrap().into(),
            id: body["user_id"].as_str().unwrap().into(),
        }
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}/_matrix/client/v3{path}", self.base)
    }
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(method, &self.url(path), Some(&self.token), body).await
    }
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
    pub async fn create_room(&self, body: Value) -> String {
        self.ok(Method::POST, "/createRoom", Some(body)).await["room_id"].as_str().unwrap().to_owned()
    }
    /// Sends an `m.room.message` with this content; returns its event id.
    pub async fn send(&self, room: &str, txn: &str, content: Value) -> String {
        let path = format!("/rooms/{room}/send/m.room.message/{txn}");
        self.ok(Method::PUT, &path, Some(content)).await["event_id"].as_str().unwrap().to_owned()
    }
    /// Sends a plain text message.
    pub async fn say(&self, room: &str, txn: &str, text: &str) -> String {
        self.send(room, txn, json!({"msgtype": "m.text", "body": text})).await
    }
    /// `GET /sync?{query}`.
    pub async fn sync(&self, query: &str) -> Value {
        self.ok(Method::GET, &format!("/sync?{query}"), None).await
    }
}

/// `user` sets presence "unavailable" with `status_msg`, and `watcher` (on
/// this node or another) sees it within 5 s (polled every 100 ms).
pub async fn status_reaches(user: &User, watcher: &User, status_msg: &str) {
    let path = format!("/presence/{}/status", user.id);
    user.ok(Method::PUT, &path, Some(json!({"presence": "unavailable", "status_msg": status_msg}))).await;
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = watcher.ok(Method::GET, &path, None).await;
        if seen["status_msg"] == status_msg {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((&seen["presence"], &seen["status_msg"]), (&json!("unavailable"), &json!(status_msg)), "{seen}");
}
