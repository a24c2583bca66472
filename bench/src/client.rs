//! A deliberately thin Matrix client: plain reqwest and `serde_json::Value`,
//! so that the client costs little next to the server it measures. Every
//! request passes through a [`Budget`], which bounds a scenario in request
//! count and wall-clock time.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

/// Bounds one scenario on one server: no request is sent past `deadline`
/// or past `max_requests`, so every loop of the tool stops by itself.
#[derive(Debug)]
pub struct Budget {
    deadline: Mutex<Instant>,
    max_requests: AtomicU64,
    used: AtomicU64,
}

impl Budget {
    fn new() -> Self {
        Budget { deadline: Mutex::new(Instant::now()), max_requests: AtomicU64::new(0), used: AtomicU64::new(0) }
    }

    /// Starts a new scenario's allowance.
    pub fn reset(&self, max_time: Duration, max_requests: u64) {
        *self.deadline.lock().expect("budget lock") = Instant::now() + max_time;
        self.max_requests.store(max_requests, Ordering::SeqCst);
        self.used.store(0, Ordering::SeqCst);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub fn deadline(&self) -> Instant {
        *self.deadline.lock().expect("budget lock")
    }

    /// Counts one request against the allowance; an error past either bound.
    pub fn charge(&self) -> Result<()> {
        if Instant::now() >= self.deadline() {
            bail!("scenario time budget exhausted (raise --max-seconds)");
        }
        let used = self.used.fetch_add(1, Ordering::SeqCst) + 1;
        if used > self.max_requests.load(Ordering::SeqCst) {
            bail!("scenario request budget exhausted after {} requests (raise --max-requests)", used - 1);
        }
        Ok(())
    }
}

/// One logged-in device.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub localpart: String,
    pub access_token: String,
    /// The device the access token belongs to (its to-device inbox and
    /// its end-to-end keys in `key-share`).
    pub device_id: String,
}

/// A homeserver under test.
#[derive(Clone)]
pub struct Server {
    pub label: String,
    pub base: Url,
    pub pid: Option<u32>,
    http: reqwest::Client,
    pub budget: Arc<Budget>,
    txn: Arc<AtomicU64>,
    run_id: String,
}

/// Per-request timeout on top of any long-poll the request asks for.
const REQUEST_SLACK: Duration = Duration::from_secs(60);

impl Server {
    pub fn new(label: &str, base: &str, pid: Option<u32>, run_id: &str) -> Result<Self> {
        let mut base = Url::parse(base).with_context(|| format!("server URL {base:?}"))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(4096)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Server {
            label: label.to_owned(),
            base,
            pid,
            http,
            budget: Arc::new(Budget::new()),
            txn: Arc::new(AtomicU64::new(0)),
            run_id: run_id.to_owned(),
        })
    }

    /// A transaction id unique in this run.
    pub fn next_txn(&self) -> String {
        format!("{}t{}", self.run_id, self.txn.fetch_add(1, Ordering::Relaxed))
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have paths");
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// Sends one request; returns the JSON answer and its size in bytes.
    /// Non-2xx answers are [`MatrixError`]s carrying the `errcode`.
    async fn json_call(
        &self,
        method: Method,
        url: Url,
        token: Option<&str>,
        body: Option<&Value>,
        long_poll: Duration,
    ) -> Result<(Value, usize)> {
        self.budget.charge()?;
        let path = url.path().to_owned();
        let mut req = self.http.request(method.clone(), url).timeout(long_poll + REQUEST_SLACK);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("{method} {path}: reading body"))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: {status}: body is not JSON ({} bytes)", bytes.len()))?;
        if !status.is_success() {
            return Err(anyhow::Error::new(MatrixError { status, body: value }).context(format!("{method} {path}")));
        }
        Ok((value, bytes.len()))
    }

    /// `POST /register` through the user-interactive `m.login.dummy` flow,
    /// as a client does it: ask, receive the session, complete the stage.
    pub async fn register(&self, localpart: &str, password: &str) -> Result<Session> {
        let url = self.url(&["_matrix", "client", "v3", "register"], &[]);
        let mut body = json!({
            "username": localpart,
            "password": password,
            "initial_device_display_name": "chancery-bench",
        });
        let first = self.json_call(Method::POST, url.clone(), None, Some(&body), Duration::ZERO).await;
        let session = match first {
            Ok((v, _)) => return session_from(&v, localpart),
            Err(e) => match e.downcast_ref::<MatrixError>() {
                Some(m) if m.status == StatusCode::UNAUTHORIZED => m.body["session"].as_str().map(str::to_owned),
                _ => return Err(e.context(format!("registering {localpart}"))),
            },
        };
        body["auth"] = json!({ "type": "m.login.dummy", "session": session });
        let (v, _) = self
            .json_call(Method::POST, url, None, Some(&body), Duration::ZERO)
            .await
            .with_context(|| format!("registering {localpart} (dummy stage)"))?;
        session_from(&v, localpart)
    }

    pub async fn login(&self, localpart: &str, password: &str) -> Result<Session> {
        let url = self.url(&["_matrix", "client", "v3", "login"], &[]);
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": localpart },
            "password": password,
            "initial_device_display_name": "chancery-bench",
        });
        let (v, _) = self.json_call(Method::POST, url, None, Some(&body), Duration::ZERO).await?;
        session_from(&v, localpart)
    }

    /// `POST /_matrix/media/v3/upload` of `bytes`; returns the `mxc://` URI.
    pub async fn upload_media(&self, s: &Session, bytes: Vec<u8>, content_type: &str, file_name: &str) -> Result<String> {
        self.budget.charge()?;
        let url = self.url(&["_matrix", "media", "v3", "upload"], &[("filename", file_name)]);
        let resp = self
            .http
            .post(url)
            .timeout(REQUEST_SLACK)
            .bearer_auth(&s.access_token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await
            .context("POST /_matrix/media/v3/upload")?;
        let status = resp.status();
        let value: Value = resp.json().await.context("upload: the answer is not JSON")?;
        if !status.is_success() {
            return Err(anyhow::Error::new(MatrixError { status, body: value }).context("POST /_matrix/media/v3/upload"));
        }
        str_field(&value, "content_uri")
    }

    /// `GET /_matrix/client/v1/media/thumbnail/{server}/{media}` with these
    /// query parameters; returns the bytes and their `Content-Type`.
    pub async fn thumbnail(&self, s: &Session, mxc: &str, query: &[(&str, &str)]) -> Result<(Vec<u8>, String)> {
        self.budget.charge()?;
        let (server, media) = mxc
            .strip_prefix("mxc://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| anyhow::anyhow!("not an mxc URI: {mxc}"))?;
        let url = self.url(&["_matrix", "client", "v1", "media", "thumbnail", server, media], query);
        let resp =
            self.http.get(url).timeout(REQUEST_SLACK).bearer_auth(&s.access_token).send().await.context("GET thumbnail")?;
        let status = resp.status();
        let content_type =
            resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = resp.bytes().await.context("GET thumbnail: reading body")?;
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(anyhow::Error::new(MatrixError { status, body }).context("GET thumbnail"));
        }
        Ok((bytes.to_vec(), content_type))
    }

    pub async fn whoami(&self, s: &Session) -> Result<String> {
        let url = self.url(&["_matrix", "client", "v3", "account", "whoami"], &[]);
        let (v, _) = self.json_call(Method::GET, url, Some(&s.access_token), None, Duration::ZERO).await?;
        str_field(&v, "user_id")
    }

    /// Creates a public room (anyone on the server may join).
    pub async fn create_room(&self, s: &Session, name: &str, room_version: Option<&str>) -> Result<String> {
        self.create_room_with_state(s, name, room_version, &[]).await
    }

    /// Creates a public room with `initial_state` events (e.g.
    /// `m.room.encryption`).
    pub async fn create_room_with_state(
        &self,
        s: &Session,
        name: &str,
        room_version: Option<&str>,
        initial_state: &[Value],
    ) -> Result<String> {
        let url = self.url(&["_matrix", "client", "v3", "createRoom"], &[]);
        let mut body = json!({ "preset": "public_chat", "name": name });
        if !initial_state.is_empty() {
            body["initial_state"] = json!(initial_state);
        }
        if let Some(v) = room_version {
            body["room_version"] = json!(v);
        }
        let (v, _) = self.json_call(Method::POST, url, Some(&s.access_token), Some(&body), Duration::ZERO).await?;
        str_field(&v, "room_id")
    }

    /// Creates a public room where every member may send `event_type`
    /// state (as Element Call's call rooms let members send their call
    /// membership).
    pub async fn create_room_open_to(
        &self,
        s: &Session,
        name: &str,
        room_version: Option<&str>,
        event_type: &str,
    ) -> Result<String> {
        let url = self.url(&["_matrix", "client", "v3", "createRoom"], &[]);
        let mut body = json!({
            "preset": "public_chat",
            "name": name,
            "power_level_content_override": { "events": { event_type: 0 } },
        });
        if let Some(v) = room_version {
            body["room_version"] = json!(v);
        }
        let (v, _) = self.json_call(Method::POST, url, Some(&s.access_token), Some(&body), Duration::ZERO).await?;
        str_field(&v, "room_id")
    }

    /// Schedules a delayed state event (MSC4140, `org.matrix.msc4140.delay`);
    /// returns its delay id.
    pub async fn schedule_delayed_state(
        &self,
        s: &Session,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        delay_ms: u64,
        content: &Value,
    ) -> Result<String> {
        let delay = delay_ms.to_string();
        let url = self.url(
            &["_matrix", "client", "v3", "rooms", room_id, "state", event_type, state_key],
            &[("org.matrix.msc4140.delay", &delay)],
        );
        let (v, _) = self.json_call(Method::PUT, url, Some(&s.access_token), Some(content), Duration::ZERO).await?;
        str_field(&v, "delay_id")
    }

    /// `POST …/delayed_events/{delay_id}/{action}` without an access token,
    /// as lk-jwt-service calls it (`restart`, `cancel`, `send`).
    pub async fn delayed_event_action(&self, delay_id: &str, action: &str) -> Result<()> {
        let url = self.url(&["_matrix", "client", "unstable", "org.matrix.msc4140", "delayed_events", delay_id, action], &[]);
        self.json_call(Method::POST, url, None, Some(&json!({})), Duration::ZERO).await?;
        Ok(())
    }

    /// The user's scheduled delayed events (MSC4140 listing).
    pub async fn delayed_events(&self, s: &Session) -> Result<Vec<Value>> {
        let url = self.url(&["_matrix", "client", "unstable", "org.matrix.msc4140", "delayed_events"], &[]);
        let (v, _) = self.json_call(Method::GET, url, Some(&s.access_token), None, Duration::ZERO).await?;
        v.get("delayed_events").and_then(Value::as_array).cloned().ok_or_else(|| anyhow!("no delayed_events list in {v}"))
    }

    /// A LiveKit URL and access token for `s` in `room_id`, as Element
    /// Call gets them: an OpenID token from
    /// `/user/{userId}/openid/request_token`, handed to the token service's
    /// legacy `POST <livekit_service_url>/sfu/get` (lk-jwt-service's
    /// endpoint; Chancery serves it at `/livekit/jwt`).
    pub async fn livekit_token(&self, s: &Session, room_id: &str) -> Result<(String, String)> {
        let url = self.url(&["_matrix", "client", "v3", "user", &s.user_id, "openid", "request_token"], &[]);
        let (openid, _) = self.json_call(Method::POST, url, Some(&s.access_token), Some(&json!({})), Duration::ZERO).await?;
        let body = json!({ "room": room_id, "openid_token": openid, "device_id": s.device_id });
        let url = self.url(&["livekit", "jwt", "sfu", "get"], &[]);
        let (answer, _) = self.json_call(Method::POST, url, None, Some(&body), Duration::ZERO).await?;
        Ok((str_field(&answer, "url")?, str_field(&answer, "jwt")?))
    }

    /// Creates a public room with a name and the alias `#alias_local:<server>`;
    /// returns its id.
    pub async fn create_room_with_alias(
        &self,
        s: &Session,
        name: &str,
        alias_local: &str,
        room_version: Option<&str>,
    ) -> Result<String> {
        let url = self.url(&["_matrix", "client", "v3", "createRoom"], &[]);
        let mut body = json!({ "preset": "public_chat", "name": name, "room_alias_name": alias_local });
        if let Some(v) = room_version {
            body["room_version"] = json!(v);
        }
        let (v, _) = self.json_call(Method::POST, url, Some(&s.access_token), Some(&body), Duration::ZERO).await?;
        str_field(&v, "room_id")
    }

    /// `POST /join/{roomIdOrAlias}` with an alias (resolved over federation
    /// when it names another server); returns the room id joined.
    pub async fn join_alias(&self, s: &Session, alias: &str) -> Result<String> {
        let url = self.url(&["_matrix", "client", "v3", "join", alias], &[]);
        let (v, _) = self.json_call(Method::POST, url, Some(&s.access_token), Some(&json!({})), Duration::ZERO).await?;
        str_field(&v, "room_id")
    }

    pub async fn join(&self, s: &Session, room_id: &str) -> Result<()> {
        let url = self.url(&["_matrix", "client", "v3", "rooms", room_id, "join"], &[]);
        let (v, _) = self.json_call(Method::POST, url, Some(&s.access_token), Some(&json!({})), Duration::ZERO).await?;
        let joined = str_field(&v, "room_id")?;
        if joined != room_id {
            bail!("joined {joined}, asked for {room_id}");
        }
        Ok(())
    }

    /// Sends an `m.room.message` of type `m.text`; returns its event id.
    pub async fn send_text(&self, s: &Session, room_id: &str, body: &str) -> Result<String> {
        let txn = self.next_txn();
        let url = self.url(&["_matrix", "client", "v3", "rooms", room_id, "send", "m.room.message", &txn], &[]);
        let content = json!({ "msgtype": "m.text", "body": body });
        let (v, _) = self.json_call(Method::PUT, url, Some(&s.access_token), Some(&content), Duration::ZERO).await?;
        str_field(&v, "event_id")
    }

    /// `GET /sync`; returns the response and its size in bytes.
    pub async fn sync(&self, s: &Session, since: Option<&str>, timeout_ms: u64, filter: &str) -> Result<(Value, usize)> {
        let timeout = timeout_ms.to_string();
        let mut query = vec![("timeout", timeout.as_str()), ("filter", filter)];
        if let Some(since) = since {
            query.push(("since", since));
        }
        let url = self.url(&["_matrix", "client", "v3", "sync"], &query);
        self.json_call(Method::GET, url, Some(&s.access_token), None, Duration::from_millis(timeout_ms)).await
    }

    /// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`
    /// (MSC4186 simplified sliding sync) with `body`; `pos` and `timeout`
    /// travel in the query, as ruma's `sync_events::v5::Request` puts them
    /// (matrix-sdk always sends `timeout`, 0 for an answer at once).
    /// Returns the response and its size in bytes.
    pub async fn sliding_sync(&self, s: &Session, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Result<(Value, usize)> {
        let timeout = timeout_ms.to_string();
        let mut query = vec![("timeout", timeout.as_str())];
        if let Some(pos) = pos {
            query.push(("pos", pos));
        }
        let url = self.url(&["_matrix", "client", "unstable", "org.matrix.simplified_msc3575", "sync"], &query);
        self.json_call(Method::POST, url, Some(&s.access_token), Some(body), Duration::from_millis(timeout_ms)).await
    }

    /// One page of `GET /rooms/{id}/messages`, backwards.
    pub async fn messages_back(&self, s: &Session, room_id: &str, from: Option<&str>, limit: u32) -> Result<Value> {
        let limit = limit.to_string();
        let mut query = vec![("dir", "b"), ("limit", limit.as_str())];
        if let Some(from) = from {
            query.push(("from", from));
        }
        let url = self.url(&["_matrix", "client", "v3", "rooms", room_id, "messages"], &query);
        Ok(self.json_call(Method::GET, url, Some(&s.access_token), None, Duration::ZERO).await?.0)
    }

    pub async fn joined_members_count(&self, s: &Session, room_id: &str) -> Result<usize> {
        let url = self.url(&["_matrix", "client", "v3", "rooms", room_id, "joined_members"], &[]);
        let (v, _) = self.json_call(Method::GET, url, Some(&s.access_token), None, Duration::ZERO).await?;
        v["joined"].as_object().map(|m| m.len()).ok_or_else(|| anyhow!("joined_members: no `joined` object"))
    }

    /// `POST /keys/upload` with a body the caller built (device keys
    /// and/or one-time keys); returns the answer (`one_time_key_counts`).
    pub async fn keys_upload(&self, s: &Session, body: &Value) -> Result<Value> {
        let url = self.url(&["_matrix", "client", "v3", "keys", "upload"], &[]);
        Ok(self.json_call(Method::POST, url, Some(&s.access_token), Some(body), Duration::ZERO).await?.0)
    }

    /// `POST /keys/query` for every device of `user_ids`.
    pub async fn keys_query(&self, s: &Session, user_ids: &[String]) -> Result<Value> {
        let url = self.url(&["_matrix", "client", "v3", "keys", "query"], &[]);
        let device_keys: serde_json::Map<String, Value> = user_ids.iter().map(|u| (u.clone(), json!([]))).collect();
        let body = json!({ "device_keys": device_keys });
        Ok(self.json_call(Method::POST, url, Some(&s.access_token), Some(&body), Duration::ZERO).await?.0)
    }

    /// `POST /keys/claim` of one key of `algorithm` for each (user, device).
    pub async fn keys_claim(&self, s: &Session, devices: &[(String, String)], algorithm: &str) -> Result<Value> {
        let url = self.url(&["_matrix", "client", "v3", "keys", "claim"], &[]);
        let mut wanted = serde_json::Map::new();
        for (user, device) in devices {
            let per_user = wanted.entry(user.clone()).or_insert_with(|| json!({}));
            per_user[device] = json!(algorithm);
        }
        let body = json!({ "one_time_keys": wanted });
        Ok(self.json_call(Method::POST, url, Some(&s.access_token), Some(&body), Duration::ZERO).await?.0)
    }

    /// `PUT /sendToDevice/{event_type}/{txn}` with `messages`
    /// (`{user: {device: content}}`), under a new transaction id.
    pub async fn send_to_device(&self, s: &Session, event_type: &str, messages: &Value) -> Result<()> {
        let txn = self.next_txn();
        let url = self.url(&["_matrix", "client", "v3", "sendToDevice", event_type, &txn], &[]);
        let body = json!({ "messages": messages });
        self.json_call(Method::PUT, url, Some(&s.access_token), Some(&body), Duration::ZERO).await?;
        Ok(())
    }

    /// `GET /_matrix/client/versions`, outside any scenario budget: checks
    /// that the URL is a homeserver before a run starts.
    pub async fn check_reachable(&self) -> Result<()> {
        let url = self.url(&["_matrix", "client", "versions"], &[]);
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("{} ({}) is not reachable", self.label, self.base))?;
        if !resp.status().is_success() {
            bail!("{} ({}): /versions answered {}", self.label, self.base, resp.status());
        }
        Ok(())
    }
}

/// A non-2xx answer: status and the Matrix error body.
#[derive(Debug)]
pub struct MatrixError {
    pub status: StatusCode,
    pub body: Value,
}

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.body["errcode"].as_str().unwrap_or("?");
        let msg = self.body["error"].as_str().unwrap_or("");
        write!(f, "{} {code}: {msg}", self.status)?;
        if code == "M_LIMIT_EXCEEDED" {
            write!(f, " (the server rate-limits; lift its limits before measuring)")?;
        }
        Ok(())
    }
}

impl std::error::Error for MatrixError {}

fn str_field(v: &Value, key: &str) -> Result<String> {
    v[key].as_str().map(str::to_owned).ok_or_else(|| anyhow!("response has no string `{key}`"))
}

fn session_from(v: &Value, localpart: &str) -> Result<Session> {
    Ok(Session {
        user_id: str_field(v, "user_id")?,
        localpart: localpart.to_owned(),
        access_token: str_field(v, "access_token")?,
        device_id: str_field(v, "device_id")?,
    })
}
