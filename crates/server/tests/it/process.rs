//! The `chancery` binary as an operator runs it: config errors, the CLI,
//! graceful shutdown, and crash safety under SIGKILL.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chancery_testkit::{Backend, ChildServer, test_config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::common::{PASSWORD, User, call, http, login};

const BIN: &str = env!("CARGO_BIN_EXE_chancery");

fn chancery(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).args(args).env_remove("CHANCERY_CONFIG").env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn config_errors_stop_startup_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("CHANCERY_LISTEN", "not-an-address")], "key `listen` (from CHANCERY_LISTEN)"),
        (&[("CHANCERY_REGISTRATION", "everyone")], "key `registration` (from CHANCERY_REGISTRATION)"),
        (&[("CHANCERY_DATABASE_URL", "mysql://db")], "key `database_url` (from CHANCERY_DATABASE_URL)"),
        (&[("CHANCERY_SERVER_NAME", "bad name")], "key `server_name` (from CHANCERY_SERVER_NAME)"),
        (&[("CHANCERY_LIMITS__MAX_REQUEST_BODY_BYTES", "ten")], "key `limits.max_request_body_bytes`"),
    ];
    for (env, want) in cases {
        let out = chancery(dir.path(), &["serve"], &[env, &[("CHANCERY_CONFIG", "empty.toml")][..]].concat());
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let missing = chancery(dir.path(), &["--config", "/nonexistent/chancery.toml", "serve"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/chancery.toml"));
    // The first run with the implicit path writes the commented template.
    let first = chancery(dir.path(), &["registration-token", "list"], &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let written = std::fs::read_to_string(dir.path().join("chancery.toml")).unwrap();
    assert!(written.contains("# Who may create accounts"));
    assert!(dir.path().join("data/chancery.db").exists());
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = chancery(dir.path(), &["--version"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("chancery "));
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["create-user", "--help"],
        &["registration-token", "--help"],
        &["registration-token", "create", "--help"],
    ] {
        let out = chancery(dir.path(), args, &[]);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_users_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(Backend::Sqlite, dir.path()).await.unwrap();
    config.registration = chancery_server::config::RegistrationMode::Token;
    let server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let cfg = server.config_path.to_str().unwrap().to_owned();

    let mut child = Command::new(BIN)
        .args(["--config", &cfg, "create-user", "olivia", "--admin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "created @olivia:localhost (admin)");
    assert_eq!(login(&server.base_url, "olivia", PASSWORD).await.0, 200);

    // Without --password-stdin a password is generated and printed once.
    let out = chancery(dir.path(), &["--config", &cfg, "create-user", "peter"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let generated = stdout.lines().find_map(|l| l.strip_prefix("password: ")).expect("password line");
    assert_eq!(login(&server.base_url, "peter", generated).await.0, 200);
    let dup = chancery(dir.path(), &["--config", &cfg, "create-user", "peter"], &[]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already taken"));

    let out = chancery(
        dir.path(),
        &["--config", &cfg, "registration-token", "create", "--uses-allowed", "2", "--expires-in", "3600"],
        &[],
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(token.len(), 16);
    let validity = format!("{}/_matrix/client/v1/register/m.login.registration_token/validity?token={token}", server.base_url);
    assert_eq!(call(Method::GET, &validity, None, None).await.1, json!({"valid": true}));
    let list = chancery(dir.path(), &["--config", &cfg, "registration-token", "list"], &[]);
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(listing.lines().any(|l| l.starts_with(&token) && l.ends_with("valid")), "{listing}");
    let revoke = chancery(dir.path(), &["--config", &cfg, "registration-token", "revoke", &token], &[]);
    assert!(revoke.status.success());
    assert_eq!(call(Method::GET, &validity, None, None).await.1, json!({"valid": false}));
    let list = chancery(dir.path(), &["--config", &cfg, "registration-token", "list"], &[]);
    assert!(String::from_utf8_lossy(&list.stdout).lines().any(|l| l.starts_with(&token) && l.ends_with("revoked")));
    let bad = chancery(dir.path(), &["--config", &cfg, "registration-token", "create", "--token", "no spaces allowed"], &[]);
    assert!(!bad.status.success());

    let status = server.terminate().await.unwrap();
    assert!(status.success(), "{status}");
}

/// SIGTERM lets requests in flight finish and exits cleanly: requests
/// whose bodies are still arriving when the signal comes, and that then
/// hash a password, each get their whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_graceful() {
    use crate::connections::{VERSIONS, answer, connect};
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let config = test_config(Backend::Sqlite, dir.path()).await.unwrap();
    let server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let mut readers = Vec::new();
    let mut rests = Vec::new();
    for i in 0..8 {
        let mut stream = connect(&server.base_url).await;
        // A first answer on the connection: the server has accepted it
        // and reads it, so what follows is a request in flight.
        stream.write_all(VERSIONS).await.unwrap();
        assert_eq!(answer(&mut stream).await.expect("an answer").0, 200);
        let body = json!({"username": format!("t{i}"), "password": PASSWORD, "auth": {"type": "m.login.dummy"}}).to_string();
        let head = format!(
            "POST /_matrix/client/v3/register HTTP/1.1\r\nHost: chancery\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (first, rest) = body.split_at(body.len() / 2);
        stream.write_all(format!("{head}{first}").as_bytes()).await.unwrap();
        let (reader, writer) = stream.into_split();
        readers.push(reader);
        rests.push((writer, rest.to_owned()));
    }
    // The handlers are now waiting for the rest of their bodies.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let finish = tokio::spawn(async move {
        // Sent once the signal is in (terminate sends it at once).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut writers = Vec::new();
        for (mut writer, rest) in rests {
            writer.write_all(rest.as_bytes()).await.expect("the server closed a request in flight");
            writers.push(writer); // the write sides stay open until the answers are read
        }
        writers
    });
    let status = server.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    let writers = finish.await.unwrap();
    for mut reader in readers {
        let (status, _, body) = answer(&mut reader).await.expect("a request in flight was cut off");
        assert_eq!(status, 200, "{body}");
        assert!(body["access_token"].is_string(), "{body}");
    }
    drop(writers);
    assert!(
        !dir.path().join("chancery.db-wal").exists() || std::fs::metadata(dir.path().join("chancery.db-wal")).unwrap().len() == 0
    );
}

/// A burst of writes that SIGKILL cuts short: what its workers share.
struct Burst {
    /// Writes acknowledged so far.
    acked: AtomicUsize,
    /// How many to wait for before the kill.
    kill_after: usize,
    enough: Notify,
    /// Set just before the kill is issued: a connection failing from then
    /// on is the kill's doing.
    killed: AtomicBool,
}

/// How a worker of a burst ended, if not with an error: what it had
/// acknowledged, and whether the kill cut it short (else it ran out of
/// its bounded number of writes).
type Stopped<T> = (Vec<T>, bool);

impl Burst {
    fn new(kill_after: usize) -> Arc<Self> {
        Arc::new(Self { acked: AtomicUsize::new(0), kill_after, enough: Notify::new(), killed: AtomicBool::new(false) })
    }

    /// Spawns a worker of the burst. One that fails ends the wait for the
    /// kill at once: the test fails anyway, and says why sooner.
    fn spawn<T: Send + 'static, W: Future<Output = Result<Stopped<T>, String>> + Send + 'static>(
        self: &Arc<Self>,
        worker: impl FnOnce(Arc<Self>) -> W,
    ) -> JoinHandle<Result<Stopped<T>, String>> {
        let burst = Arc::clone(self);
        let worker = worker(Arc::clone(self));
        tokio::spawn(async move {
            let stopped = worker.await;
            if stopped.is_err() {
                burst.enough.notify_one();
            }
            stopped
        })
    }

    /// Counts one acknowledged write.
    fn acknowledged(&self) {
        if self.acked.fetch_add(1, Ordering::SeqCst) + 1 == self.kill_after {
            self.enough.notify_one();
        }
    }

    /// Waits (at most 60 s) until `kill_after` writes were acknowledged,
    /// then kills the server with SIGKILL.
    async fn kill_when_enough(&self, server: &mut ChildServer) {
        let _ = tokio::time::timeout(Duration::from_secs(60), self.enough.notified()).await;
        self.killed.store(true, Ordering::SeqCst);
        server.kill().await.unwrap();
    }

    /// Sends one request of the burst: `Ok(Some(body))` for a 200 JSON
    /// answer, `Ok(None)` when the connection failed after the kill was
    /// issued (the worker stops there). Anything else is an error that
    /// fails the test: an error status (above all a 5xx), an answer that
    /// does not parse, a connection failing before the kill, a timeout.
    async fn request(&self, request: reqwest::RequestBuilder) -> Result<Option<Value>, String> {
        let cut_short = |e: reqwest::Error| {
            if self.killed.load(Ordering::SeqCst) && !e.is_timeout() {
                Ok(None)
            } else {
                Err(format!("request failed, and not because of the kill: {e}"))
            }
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return cut_short(e),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return cut_short(e),
        };
        if status != StatusCode::OK {
            return Err(format!("answered {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("a 200 answer that does not parse ({e})"))
    }

    /// Waits (at most 60 s each) for the workers once the server is
    /// killed; fails the test if one failed or panicked, or if none was
    /// cut short (then the kill came after the burst, not during it).
    async fn join<T>(&self, workers: Vec<JoinHandle<Result<Stopped<T>, String>>>) -> Vec<Vec<T>> {
        let mut acked = Vec::new();
        let mut cut = 0;
        for (n, worker) in workers.into_iter().enumerate() {
            let joined = tokio::time::timeout(Duration::from_secs(60), worker)
                .await
                .unwrap_or_else(|_| panic!("worker {n} still running 60 s after the kill"));
            match joined {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("worker {n}: {e}"),
                Ok(Err(e)) => panic!("worker {n}: {e}"),
                Ok(Ok((writes, was_cut))) => {
                    acked.push(writes);
                    cut += usize::from(was_cut);
                }
            }
        }
        assert!(cut > 0, "every worker finished before the kill: nothing was in flight");
        let total = self.acked.load(Ordering::SeqCst);
        assert!(total >= self.kill_after, "only {total} acknowledged writes before the kill");
        acked
    }
}

/// `PRAGMA integrity_check` is ok and no foreign key points nowhere.
fn assert_sqlite_sound(dir: &std::path::Path) {
    let db = rusqlite::Connection::open(dir.join("chancery.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let orphans: i64 = db.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
    assert_eq!(orphans, 0);
}

/// Kill -9 in the middle of a burst of registrations and logins: after a
/// restart every acknowledged account and device is there and the
/// database is sound.
async fn crash_safety(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(backend, dir.path()).await.unwrap();
    let mut server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let burst = Burst::new(30);
    let mut workers = Vec::new();
    for w in 0..6 {
        let base = server.base_url.clone();
        workers.push(burst.spawn(|burst| async move {
            let client = http();
            // (account name, user id, access token) of each acknowledged
            // registration and login.
            let mut devices = Vec::new();
            // Bounded: at most 40 accounts per worker.
            for i in 0..40 {
                let name = format!("w{w}u{i}");
                let register = json!({"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}});
                let login =
                    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": PASSWORD});
                for (path, body) in [("register", register), ("login", login)] {
                    let request = client.post(format!("{base}/_matrix/client/v3/{path}")).json(&body);
                    let Some(answer) = burst.request(request).await? else { return Ok((devices, true)) };
                    let (Some(user_id), Some(token)) = (answer["user_id"].as_str(), answer["access_token"].as_str()) else {
                        return Err(format!("{path} answered 200 without user_id and access_token"));
                    };
                    devices.push((name.clone(), user_id.to_owned(), token.to_owned()));
                    burst.acknowledged();
                }
            }
            Ok((devices, false))
        }));
    }
    burst.kill_when_enough(&mut server).await;
    let devices: Vec<_> = burst.join(workers).await.into_iter().flatten().collect();
    if backend == Backend::Sqlite {
        assert_sqlite_sound(dir.path());
    }

    let server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let base = server.base_url.clone();
    for (_, user_id, token) in &devices {
        let (status, body) = call(Method::GET, &format!("{base}/_matrix/client/v3/account/whoami"), Some(token), None).await;
        assert_eq!(status, 200, "acknowledged device of {user_id} lost: {body}");
        assert_eq!(body["user_id"], user_id.as_str());
    }
    let mut names: Vec<&str> = devices.iter().map(|(name, _, _)| name.as_str()).collect();
    names.dedup();
    for name in names.iter().take(10) {
        assert_eq!(login(&base, name, PASSWORD).await.0, 200, "{name}");
    }
    assert!(server.terminate().await.unwrap().success());
}

on_both_backends!(crash_safety);

/// An event the server acknowledged during a burst.
struct AckedEvent {
    room: String,
    event_id: String,
    is_state: bool,
}

/// The state every state event of the send burst changes, in each room.
const BURST_STATE: (&str, &str) = ("org.example.burst", "shared");

/// Kill -9 in the middle of a burst of messages and state events sent
/// concurrently by several users into a few rooms (the pipelined,
/// group-committed send path: messages of one room share commits, state
/// events wait for the pending ones). After a restart every acknowledged
/// event is in its room once, in the order its sender had it
/// acknowledged; every acknowledged state event is the room's current
/// state or followed by a later change of it; the rooms take sends
/// again; the database is sound.
async fn crash_safety_of_sends(backend: Backend) {
    const SENDERS: usize = 8;
    const ROOMS: usize = 3;
    const SENDS_PER_SENDER: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(backend, dir.path()).await.unwrap();
    // No per-user event limit may slow the senders down (nor answer 429).
    assert!(!config.rate_limits.enabled);
    let mut server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let base = server.base_url.clone();
    let mut senders = Vec::new();
    for n in 0..SENDERS {
        senders.push(User::new(&base, &format!("sender{n}")).await);
    }
    let mut rooms = Vec::new();
    for _ in 0..ROOMS {
        let everyone_may_change_it = json!({"events": {BURST_STATE.0: 0}});
        rooms.push(
            senders[0]
                .create_room(json!({"preset": "public_chat", "power_level_content_override": everyone_may_change_it}))
                .await,
        );
    }
    for sender in &senders[1..] {
        for room in &rooms {
            sender.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
        }
    }

    // Each sender writes one request at a time (so its acknowledgements
    // have an order), all senders at once into every room.
    let burst = Burst::new(SENDERS * SENDS_PER_SENDER / 3);
    let mut workers = Vec::new();
    for (w, sender) in senders.iter().enumerate() {
        let (rooms, token) = (rooms.clone(), sender.token.clone());
        let url = sender.url("");
        workers.push(burst.spawn(|burst| async move {
            let client = http();
            let mut acked = Vec::new();
            for i in 0..SENDS_PER_SENDER {
                let room = &rooms[(w + i) % rooms.len()];
                let is_state = i % 5 == 4;
                let (path, body) = if is_state {
                    (format!("/rooms/{room}/state/{}/{}", BURST_STATE.0, BURST_STATE.1), json!({"sender": w, "n": i}))
                } else {
                    (
                        format!("/rooms/{room}/send/m.room.message/w{w}-{i}"),
                        json!({"msgtype": "m.text", "body": format!("{w}/{i}")}),
                    )
                };
                let request = client.put(format!("{url}{path}")).bearer_auth(&token).json(&body);
                let Some(answer) = burst.request(request).await? else { return Ok((acked, true)) };
                let event_id = answer["event_id"].as_str().ok_or_else(|| format!("{path} answered 200 without event_id"))?;
                acked.push(AckedEvent { room: room.clone(), event_id: event_id.to_owned(), is_state });
                burst.acknowledged();
            }
            Ok((acked, false))
        }));
    }
    burst.kill_when_enough(&mut server).await;
    let acked = burst.join(workers).await;
    if backend == Backend::Sqlite {
        assert_sqlite_sound(dir.path());
    }

    let server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let reader = User { base: server.base_url.clone(), token: senders[0].token.clone(), id: senders[0].id.clone() };
    for (r, room) in rooms.iter().enumerate() {
        let timeline = room_timeline(&reader, room).await;
        let mut position = HashMap::new();
        for (at, event) in timeline.iter().enumerate() {
            let id = event["event_id"].as_str().unwrap();
            assert!(position.insert(id, at).is_none(), "{id} twice in {room}");
        }
        for (w, events) in acked.iter().enumerate() {
            let mut previous = None;
            for event in events.iter().filter(|e| &e.room == room) {
                let at = position.get(event.event_id.as_str()).copied();
                assert!(at.is_some(), "{} acknowledged to sender {w} is lost from {room}", event.event_id);
                assert!(at > previous, "{} of sender {w} is before what was acknowledged to it earlier", event.event_id);
                previous = at;
            }
        }
        // The current state is the last change in the timeline, so at or
        // after every acknowledged one.
        let acked_state: Vec<usize> =
            acked.iter().flatten().filter(|e| &e.room == room && e.is_state).map(|e| position[e.event_id.as_str()]).collect();
        let is_burst_state = |e: &&Value| e["type"] == BURST_STATE.0 && e["state_key"] == BURST_STATE.1;
        let last_change = timeline.iter().rev().find(is_burst_state).map(|e| e["event_id"].as_str().unwrap());
        let state = reader.ok(Method::GET, &format!("/rooms/{room}/state"), None).await;
        let current = state.as_array().unwrap().iter().find(is_burst_state).map(|e| e["event_id"].as_str().unwrap());
        assert_eq!(current, last_change, "current state of {room}");
        if let Some(current) = current {
            assert!(acked_state.iter().all(|&at| at <= position[current]), "{room}: acknowledged state after the current one");
        } else {
            assert!(acked_state.is_empty(), "{room}: acknowledged state events but no current state");
        }
        reader.say(room, &format!("after-the-crash-{r}"), "after the crash").await;
    }
    assert!(acked.iter().flatten().any(|e| e.is_state), "no state event was acknowledged");
    assert!(server.terminate().await.unwrap().success());
}

on_both_backends!(crash_safety_of_sends);

/// Every event of `room`, oldest first, read with `/messages` in pages of
/// 100 (at most 50 pages).
async fn room_timeline(user: &User, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = String::new();
    for _ in 0..50 {
        let page = user.ok(Method::GET, &format!("/rooms/{room}/messages?dir=f&limit=100{from}"), None).await;
        events.extend(page["chunk"].as_array().unwrap().iter().cloned());
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => from = format!("&from={end}"),
            _ => return events,
        }
    }
    panic!("{room} has more than 50 pages");
}
