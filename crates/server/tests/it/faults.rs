//! The database failing under a running server (ARCHITECTURE.md,
//! "Faults"): PostgreSQL stopped and started again under two nodes, SQLite
//! on a full disk, and debug logs that must not carry what clients sent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chancery_testkit::pg::PgCluster;
use chancery_testkit::{Backend, ChildServer, TestServer, test_config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{User, call, login, request, status_reaches, wait_for_parked_polls, with_metrics};

const BIN: &str = env!("CARGO_BIN_EXE_chancery");

/// Sends a request that the server must refuse for now: 503, `M_UNKNOWN`,
/// and a `Retry-After` of whole seconds. Returns the error message.
async fn assert_unavailable(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> String {
    let resp = request(method, url, token, body).send().await.expect("request sent");
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{url}: {body}");
    assert_eq!(body["errcode"], "M_UNKNOWN", "{url}: {body}");
    let seconds: u64 =
        retry_after.as_deref().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{url}: Retry-After {retry_after:?}"));
    assert!(seconds >= 1, "{url}: Retry-After {seconds}");
    body["error"].as_str().unwrap_or_default().to_owned()
}

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The bodies of the room's last 200 messages, oldest first.
async fn room_bodies(user: &User, room: &str) -> Vec<String> {
    let page = user.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=200"), None).await;
    let mut bodies: Vec<String> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect();
    bodies.reverse();
    bodies
}

/// A long-poll of `user` from `since` (20 s, under the client's 30 s) in the background: its answer
/// and how long it took.
fn start_long_poll(user: &User, since: &str) -> tokio::task::JoinHandle<((StatusCode, Value), Duration)> {
    let (url, token) = (user.url(&format!("/sync?since={since}&timeout=20000&set_presence=offline")), user.token.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let got = call(Method::GET, &url, Some(&token), None).await;
        (got, started.elapsed())
    })
}

/// Starts `user`'s long-poll from `since` on `server` (the node `user`
/// talks to), runs `trigger` once the poll is parked there, and returns
/// its answer; fails unless it was woken well before its timeout.
async fn woken_by(server: &TestServer, user: &User, since: &str, trigger: impl std::future::Future<Output = ()>) -> Value {
    let poll = start_long_poll(user, since);
    wait_for_parked_polls(server, 1).await;
    trigger.await;
    let ((status, body), elapsed) = poll.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(elapsed < Duration::from_secs(15), "not woken: answered after {elapsed:?}: {body}");
    body
}

/// Sends `text` with transaction id `txn` until it is accepted, as a client
/// retries after 503 (the same transaction id, so a send that was carried
/// out is not sent twice). Anything but 200 or 503 fails; so does no
/// success within 30 s.
async fn send_until_accepted(user: &User, room: &str, txn: &str, text: &str) {
    let path = format!("/rooms/{room}/send/m.room.message/{txn}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = user.call(Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": text}))).await;
        match status.as_u16() {
            200 => return,
            503 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("{text}: {status} {body}"),
        }
    }
}

/// PostgreSQL stopped (`pg_ctl stop -m fast`) and started again under two
/// nodes while clients send and sync: both answer 503 with Retry-After
/// during the outage (a long-poll waiting when it began included), take
/// writes again by themselves afterwards, lose no acknowledged write, and
/// each node's LISTEN connection comes back, so cross-node wake-ups,
/// typing and presence work again. The outage lasts over four seconds, so
/// a listener that waits ever longer between tries is still deaf when the
/// first message after it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_two_nodes() {
    // A cluster of its own: stopping the shared one would fail other tests.
    let mut cluster = PgCluster::start().unwrap();
    let url = cluster.fresh_database().await.unwrap();
    let first = TestServer::start_with(Backend::Postgres, |c| {
        with_metrics(c);
        c.database_url = Some(url.clone());
        c.presence.enabled = true;
    })
    .await
    .unwrap();
    let second = first.another_node().await.unwrap();
    let alice = User::new(&first.base_url, "alice").await;
    let bob_on_first = User::new(&first.base_url, "bob").await;
    let bob = User { base: second.base_url.clone(), ..bob_on_first };
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;

    let mut acknowledged = Vec::new();
    for n in 0..6 {
        let (user, text) = if n % 2 == 0 { (&alice, format!("alice before {n}")) } else { (&bob, format!("bob before {n}")) };
        user.say(&room, &format!("before-{n}"), &text).await;
        acknowledged.push(text);
    }
    let since = bob.sync("set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();

    // A long-poll waiting on the second node when the database goes away.
    let poll = start_long_poll(&bob, &since);
    wait_for_parked_polls(&second, 1).await;
    tokio::task::block_in_place(|| cluster.stop()).unwrap();
    let ((status, body), elapsed) = poll.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(elapsed < Duration::from_secs(15), "the waiting sync hung for {elapsed:?}");

    // Every request that needs the database is told to come back, on both
    // nodes, for as long as it is away.
    let outage = Instant::now();
    let mut checks = 0;
    while outage.elapsed() < Duration::from_secs(4) {
        for user in [&alice, &bob] {
            let send = user.url(&format!("/rooms/{room}/send/m.room.message/outage-{checks}"));
            assert_unavailable(Method::PUT, &send, Some(&user.token), Some(json!({"msgtype": "m.text", "body": "lost"}))).await;
            assert_unavailable(Method::GET, &user.url("/sync?timeout=0"), Some(&user.token), None).await;
        }
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": crate::common::PASSWORD});
        assert_unavailable(Method::POST, &format!("{}/_matrix/client/v3/login", second.base_url), None, Some(body)).await;
        checks += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    tokio::task::block_in_place(|| cluster.start_again()).unwrap();
    // No restart of either node: they take writes again by themselves.
    send_until_accepted(&alice, &room, "after-alice", "alice after the restart").await;
    acknowledged.push("alice after the restart".into());
    send_until_accepted(&bob, &room, "after-bob", "bob after the restart").await;
    acknowledged.push("bob after the restart".into());

    // Cross-node wake-ups, both ways.
    let since = bob.sync("timeout=0&set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    let woke = woken_by(&second, &bob, &since, async {
        alice.say(&room, "cross-1", "alice to bob across nodes").await;
    })
    .await;
    assert_eq!(timeline_bodies(&woke, &room), ["alice to bob across nodes"]);
    acknowledged.push("alice to bob across nodes".into());
    let alice_since = alice.sync("timeout=0&set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    let woke = woken_by(&first, &alice, &alice_since, async {
        bob.say(&room, "cross-2", "bob to alice across nodes").await;
    })
    .await;
    assert_eq!(timeline_bodies(&woke, &room), ["bob to alice across nodes"]);
    acknowledged.push("bob to alice across nodes".into());

    // Typing and presence, which only travel between nodes by NOTIFY.
    let since = bob.sync("timeout=0&set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    let typing = woken_by(&second, &bob, &since, async {
        alice
            .ok(Method::PUT, &format!("/rooms/{room}/typing/{}", alice.id), Some(json!({"typing": true, "timeout": 20000})))
            .await;
    })
    .await;
    let typers = typing["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == "m.typing"))
        .map(|e| e["content"]["user_ids"].clone());
    assert_eq!(typers, Some(json!([alice.id])), "{typing}");
    status_reaches(&alice, &bob, "back").await;

    // Every acknowledged message is there, once, in order, on both nodes;
    // nothing sent during the outage is.
    for user in [&alice, &bob] {
        assert_eq!(room_bodies(user, &room).await, acknowledged);
    }
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// A tmpfs of `size_bytes` mounted on a temporary directory, unmounted
/// when dropped. Needs root, which the tests have in CI.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "chancery-full-disk"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a {size_bytes}-byte tmpfs for the full-disk test failed (it needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 16 * 1024];
        // Bounded: the disk holds far fewer chunks than this.
        for _ in 0..100_000 {
            if file.write_all(&chunk).and_then(|()| file.sync_all()).is_err() {
                return path;
            }
        }
        panic!("the small disk never filled up");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).stdin(Stdio::null()).output();
    }
}

/// SQLite on a full disk: writes fail with a clear 503 (Retry-After) and
/// lose nothing acknowledged, reads and syncs keep working, writes resume
/// once space returns, and the database is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk() {
    let disk = SmallDisk::mount(16 * 1024 * 1024);
    let db = disk.path().join("chancery.db");
    let server =
        TestServer::start_with(Backend::Sqlite, |c| c.database_url = Some(format!("sqlite:{}", db.display()))).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    alice.say(&room, "first", "before the disk filled").await;
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let mut acknowledged = vec!["before the disk filled".to_owned()];

    let filler = disk.fill();
    // The WAL may still have room for a few writes; large ones use it up.
    let padding = "x".repeat(30_000);
    let mut refusal = None;
    for n in 0..100 {
        let text = format!("while full {n} {padding}");
        let url = alice.url(&format!("/rooms/{room}/send/m.room.message/full-{n}"));
        let (status, _) = call(Method::PUT, &url, Some(&alice.token), Some(json!({"msgtype": "m.text", "body": text}))).await;
        if status == 200 {
            acknowledged.push(text);
            continue;
        }
        let message =
            assert_unavailable(Method::PUT, &url, Some(&alice.token), Some(json!({"msgtype": "m.text", "body": text}))).await;
        refusal = Some(message);
        break;
    }
    let message = refusal.expect("a send was refused once the disk was full");
    assert!(message.contains("disk is full"), "{message}");
    // Other writes are refused the same way.
    let tag = alice.url(&format!("/user/{}/rooms/{room}/tags/u.work", alice.id));
    assert_unavailable(Method::PUT, &tag, Some(&alice.token), Some(json!({}))).await;

    // Reads and syncs go on.
    let read = bob.sync(&format!("since={since}&timeout=0")).await;
    assert_eq!(timeline_bodies(&read, &room), acknowledged[1..]);
    assert_eq!(room_bodies(&bob, &room).await, acknowledged);
    assert_eq!(bob.ok(Method::GET, "/joined_rooms", None).await["joined_rooms"], json!([room]));

    // Space returns: writes go through again, with no restart.
    std::fs::remove_file(filler).unwrap();
    alice.say(&room, "after", "after space returned").await;
    acknowledged.push("after space returned".into());
    alice.ok(Method::PUT, &format!("/user/{}/rooms/{room}/tags/u.work", alice.id), Some(json!({}))).await;
    assert_eq!(login(&base, "alice", crate::common::PASSWORD).await.0, 200);
    assert_eq!(room_bodies(&bob, &room).await, acknowledged);
    server.stop().await.unwrap();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

/// `RUST_LOG=debug`: what clients sent (passwords, access tokens and their
/// hashes, message bodies, account data) never reaches the log, though the
/// drivers log each statement's bound parameters at that level.
async fn debug_logs_hold_no_secrets_or_bodies(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(backend, dir.path()).await.unwrap();
    let log_path = dir.path().join("chancery.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = ChildServer::spawn_with(BIN.as_ref(), &config, &[("RUST_LOG", "debug")], log.into()).await.unwrap();
    let base = server.base_url.clone();

    let password = "unusual-passphrase-7d1c";
    let register = format!("{base}/_matrix/client/v3/register");
    let (_, challenge) = call(Method::POST, &register, None, Some(json!({"username": "olga", "password": password}))).await;
    let auth = json!({"type": "m.login.dummy", "session": challenge["session"]});
    let (status, registered) =
        call(Method::POST, &register, None, Some(json!({"username": "olga", "password": password, "auth": auth}))).await;
    assert_eq!(status, 200, "{registered}");
    let (status, logged_in) = login(&base, "olga", password).await;
    assert_eq!(status, 200, "{logged_in}");
    let olga = User {
        base: base.clone(),
        token: logged_in["access_token"].as_str().unwrap().into(),
        id: logged_in["user_id"].as_str().unwrap().into(),
    };
    let room = olga.create_room(json!({"name": "unusual-room-name-41aa"})).await;
    olga.say(&room, "t1", "unusual-message-body-93fe").await;
    olga.ok(
        Method::PUT,
        &format!("/user/{}/account_data/m.unusual", olga.id),
        Some(json!({"note": "unusual-account-data-0b27"})),
    )
    .await;
    olga.sync("").await;
    server.terminate().await.unwrap();

    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("DEBUG"), "debug logging was not on:\n{text}");
    let tokens = [registered["access_token"].as_str().unwrap(), olga.token.as_str()];
    let mut secrets: Vec<String> =
        ["unusual-passphrase-7d1c", "unusual-message-body-93fe", "unusual-account-data-0b27", "unusual-room-name-41aa"]
            .map(str::to_owned)
            .to_vec();
    for token in tokens {
        secrets.push(token.to_owned());
        secrets.push(chancery_service::tokens::hash(token));
    }
    for secret in &secrets {
        if let Some(line) = text.lines().find(|line| line.contains(secret.as_str())) {
            panic!("the log holds {secret:?}: {line}");
        }
    }
    assert!(!text.contains("$argon2"), "the log holds a password hash");
}

on_both_backends!(debug_logs_hold_no_secrets_or_bodies);

/// A store event of `room` with no content to speak of.
fn bare_event(room: &str, id: &str, event_type: &str, state_key: Option<&str>, depth: u64) -> chancery_store::NewEvent {
    chancery_store::NewEvent {
        event_id: id.into(),
        room_id: room.into(),
        event_type: event_type.into(),
        state_key: state_key.map(Into::into),
        sender: "@alice:x".into(),
        origin_server_ts: 1_000 + depth,
        depth,
        json: json!({"event_id": id, "type": event_type, "content": {}}).to_string(),
        membership: None,
        redacts: None,
        txn: None,
        search_text: Vec::new(),
        notifications: Vec::new(),
        relates_to: None,
    }
}

/// An append that PostgreSQL picks as the victim of a deadlock (another
/// transaction holds the stream lock it waits for, then waits for its
/// room) is run again and commits, instead of failing its sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadlocked_append_is_run_again() {
    use chancery_store::{RoomStore, Store};
    // `rooms::STREAM_LOCK` of the PostgreSQL store ("chanstrm").
    const STREAM_LOCK: i64 = 0x6368_616e_7374_726d;
    let url = PgCluster::shared().fresh_database().await.unwrap();
    let store = std::sync::Arc::new(chancery_store_postgres::PostgresStore::connect(&url, 4).await.unwrap());
    let room = chancery_store::NewRoom {
        room_id: "!r:x".into(),
        room_version: chancery_proto::ruma::RoomVersionId::V11,
        creator: "@alice:x".into(),
        created_ts: 1,
    };
    store.create_room(room, vec![bare_event("!r:x", "$create", "m.room.create", Some(""), 1)]).await.unwrap();

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("SET deadlock_timeout = '5s'; BEGIN; SELECT pg_advisory_xact_lock({STREAM_LOCK})"))
        .await
        .unwrap();
    let append = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(
            async move { store.append_event(bare_event("!r:x", "$m", "m.room.message", None, 2), &["$create".into()]).await },
        )
    };
    // The append holds the room's row and waits for the stream lock.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = client
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the append never waited for the stream lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now this transaction waits for the room: a deadlock, which the
    // append's backend (waiting longer, with the default 1 s timeout)
    // detects and breaks by failing the append's transaction.
    client.execute("UPDATE rooms SET max_depth = max_depth WHERE room_id = '!r:x'", &[]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    let appended = append.await.unwrap();
    assert!(matches!(appended, Ok(2)), "{appended:?}");
    assert!(store.event("$m").await.unwrap().is_some());
    drop(client);
    let _ = driver.await;
    store.close().await;
}
