//! Slow and abusive connections (issue 12, item 8): request heads and
//! bodies that never finish, requests that outlive their deadline, more
//! connections than allowed from one address or in all, shutdown with
//! connections that would hold it forever, and thousands of idle
//! connections and long-polls beside ordinary users. The clients here are
//! raw TCP streams, as a hostile client would be.

use std::time::{Duration, Instant};

use chancery_testkit::{Backend, ChildServer, TestServer, bulk_users, test_config};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{User, call, http};

pub(crate) const VERSIONS: &[u8] = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: chancery\r\n\r\n";

pub(crate) async fn connect(base: &str) -> TcpStream {
    TcpStream::connect(base.trim_start_matches("http://")).await.expect("connected")
}

/// One answer read off a raw connection: status, headers (lowercased
/// names) and JSON body. `None` if the server closed the connection
/// first. Panics after 10 s.
pub(crate) async fn answer(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u16, Vec<(String, String)>, Value)> {
    tokio::time::timeout(Duration::from_secs(10), read_answer(stream)).await.expect("no answer within 10 s")
}

async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u16, Vec<(String, String)>, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return None,
            Ok(0) | Err(_) => panic!("connection closed in the middle of an answer: {}", String::from_utf8_lossy(&buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        assert!(buf.len() < 64 * 1024, "an answer head over 64 KiB");
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 answer head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().expect("a content length"));
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.expect("the body of an answer");
        assert!(n > 0, "connection closed in the middle of an answer body");
        body.extend_from_slice(&chunk[..n]);
    }
    Some((status, headers, serde_json::from_slice(&body[..length]).unwrap_or(Value::Null)))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Waits (at most 10 s) for the server to close `stream`: any bytes it
/// sends first are returned.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => panic!("the server left the connection open; it sent: {}", String::from_utf8_lossy(&got)),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request head that never finishes, and a kept-alive connection that
/// sends no next request, are closed once the header read timeout
/// passes; the server serves others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.limits.header_read_timeout_ms = 300).await.unwrap();
    let mut slow = connect(&server.base_url).await;
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: chancery\r\n").await.unwrap();
    let mut idle = connect(&server.base_url).await;
    idle.write_all(VERSIONS).await.unwrap();
    assert_eq!(answer(&mut idle).await.expect("an answer").0, 200);

    let (status, _) = call(Method::GET, &format!("{}/_matrix/client/versions", server.base_url), None, None).await;
    assert_eq!(status, 200);
    let sent = closed_by_server(&mut slow).await;
    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.is_empty() || sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(closed_by_server(&mut idle).await.is_empty());
    server.stop().await.unwrap();
}

/// A body that stops arriving is answered 408 once the body read timeout
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_are_answered_408() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.limits.body_read_timeout_ms = 300).await.unwrap();
    let mut slow = connect(&server.base_url).await;
    slow.write_all(
        b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: chancery\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\"",
    )
    .await
    .unwrap();
    let (status, _, body) = answer(&mut slow).await.expect("an answer");
    assert_eq!((status, body["errcode"].as_str()), (408, Some("M_UNKNOWN")), "{body}");
    server.stop().await.unwrap();
}

/// A request not answered within the request timeout gets 503 with
/// `Retry-After` (here a body trickled in faster than the body timeout
/// would catch); a long-poll asking for longer than the request timeout
/// answers before it, empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_within_the_request_timeout() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.request_timeout_ms = 1_000;
        c.limits.body_read_timeout_ms = 60_000;
    })
    .await
    .unwrap();
    let stream = connect(&server.base_url).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: chancery\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // One byte every 100 ms: 10 s for the whole body, at most.
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (status, headers, body) = answer(&mut reader).await.expect("an answer");
    assert_eq!((status, body["errcode"].as_str()), (503, Some("M_UNKNOWN")), "{body}");
    assert!(header(&headers, "retry-after").is_some(), "{headers:?}");
    trickle.abort();

    let user = User::new(&server.base_url, "poller").await;
    let since = user.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (status, body) = user.call(Method::GET, &format!("/sync?since={since}&timeout=30000"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "the long-poll outlived the request timeout");
    server.stop().await.unwrap();
}

/// Past `max_connections_per_address` a new connection from that address
/// is answered 429 `M_LIMIT_EXCEEDED`, and admitted again once one closes;
/// past `max_connections` any new connection is answered 503. Behind a
/// trusted proxy the per-address cap is off (every connection is the
/// proxy's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_all() {
    async fn open(base: &str, n: usize) -> Vec<TcpStream> {
        let mut held = Vec::new();
        for _ in 0..n {
            let mut stream = connect(base).await;
            stream.write_all(VERSIONS).await.unwrap();
            assert_eq!(answer(&mut stream).await.expect("an answer").0, 200);
            held.push(stream);
        }
        held
    }
    async fn refused(base: &str) -> (u16, Value) {
        let mut stream = connect(base).await;
        stream.write_all(VERSIONS).await.unwrap();
        let (status, headers, body) = answer(&mut stream).await.expect("an answer");
        assert_eq!(header(&headers, "retry-after"), Some("1"), "{headers:?}");
        assert!(closed_by_server(&mut stream).await.is_empty(), "a refused connection is closed");
        (status, body)
    }

    let server = TestServer::start_with(Backend::Sqlite, |c| c.limits.max_connections_per_address = 8).await.unwrap();
    let mut held = open(&server.base_url, 8).await;
    let (status, body) = refused(&server.base_url).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{body}");
    assert!(body["retry_after_ms"].is_u64(), "{body}");
    drop(held.pop());
    // The server sees the close a moment later: bounded retries.
    let mut admitted = false;
    for _ in 0..100 {
        let mut stream = connect(&server.base_url).await;
        stream.write_all(VERSIONS).await.unwrap();
        if answer(&mut stream).await.expect("an answer").0 == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a closed connection did not give its place back");
    drop(held);
    server.stop().await.unwrap();

    let server = TestServer::start_with(Backend::Sqlite, |c| c.limits.max_connections = 4).await.unwrap();
    let held = open(&server.base_url, 4).await;
    let (status, body) = refused(&server.base_url).await;
    assert_eq!((status, body["errcode"].as_str()), (503, Some("M_UNKNOWN")), "{body}");
    drop(held);
    server.stop().await.unwrap();

    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.max_connections_per_address = 2;
        c.trust_forwarded_for = true;
    })
    .await
    .unwrap();
    let held = open(&server.base_url, 4).await;
    drop(held);
    server.stop().await.unwrap();
}

/// Shutdown lets requests in flight finish for at most the drain
/// deadline, then closes what is left: a body that never ends and a
/// long-poll cannot hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_what_outlives_the_drain_deadline() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.limits.shutdown_drain_ms = 500).await.unwrap();
    let user = User::new(&server.base_url, "poller").await;
    let since = user.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let url = user.url(&format!("/sync?since={since}&timeout=60000"));
    let token = user.token.clone();
    let poll = tokio::spawn(async move { http().get(url).bearer_auth(token).send().await.map(|r| r.status()) });
    let mut stuck = connect(&server.base_url).await;
    stuck
        .write_all(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: chancery\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    // Both requests reach their handlers: the long-poll parks, the login
    // waits for the rest of its body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(10), server.stop()).await.expect("shutdown waited past its drain deadline").unwrap();
    // The long-poll was cut (its connection closed) or answered; it never
    // outlives the server.
    match tokio::time::timeout(Duration::from_secs(5), poll).await.expect("the long-poll outlived the server") {
        Ok(Ok(status)) => assert_eq!(status, 200),
        Ok(Err(e)) => assert!(!e.is_status(), "{e}"),
        Err(e) => panic!("the long-poll task failed: {e}"),
    }
    closed_by_server(&mut stuck).await;
}

/// Shutdown answers a parked long-poll at once (nothing new, a position to
/// resume from) instead of letting it hold the drain until its timeout or
/// the deadline: a rolling restart takes no longer than its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_long_polls_at_once() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.shutdown_drain_ms = 60_000;
        crate::common::with_metrics(c);
    })
    .await
    .unwrap();
    let user = User::new(&server.base_url, "poller").await;
    let since = user.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let url = user.url(&format!("/sync?since={since}&timeout=60000"));
    let token = user.token.clone();
    let poll = tokio::spawn(async move {
        let resp = http().get(url).bearer_auth(token).send().await.expect("the long-poll was cut off");
        (resp.status(), resp.json::<Value>().await.expect("a whole JSON answer"))
    });
    crate::common::wait_for_parked_polls(&server, 1).await;
    tokio::time::timeout(Duration::from_secs(10), server.stop()).await.expect("shutdown waited on a parked long-poll").unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), poll).await.expect("no answer").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["next_batch"].is_string(), "{body}");
}

/// 5,000 idle connections and 2,000 long-polls (a child process, so the
/// server's descriptors are its own): other users keep being served, every
/// long-poller gets the message sent to its room, and the server keeps
/// every connection it admitted. Memory per connection is a benchmark
/// figure (`chancery-bench`'s `connections` scenario), not a test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_long_polls_leave_others_served() {
    const IDLE: usize = 5_000;
    const POLLERS: usize = 125;
    const POLLS_EACH: usize = 16;
    let needed = (IDLE + POLLERS * POLLS_EACH) as u64 + 500;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let open_files: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files in /proc/self/limits");
    assert!(
        open_files >= needed,
        "this test needs {needed} open files, the limit is {open_files}: run it through ./scripts/test"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(Backend::Sqlite, dir.path()).await.unwrap();
    config.limits.max_connections_per_address = 20_000;
    config.limits.max_connections = 20_000;
    // Idle connections are closed after the header read timeout: not
    // during this test.
    config.limits.header_read_timeout_ms = 600_000;
    let pollers = bulk_users(&config, "poller", POLLERS).await.unwrap();
    let server = ChildServer::spawn(env!("CARGO_BIN_EXE_chancery").as_ref(), &config).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    for (_, token) in &pollers {
        let (status, body) =
            call(Method::POST, &format!("{base}/_matrix/client/v3/rooms/{room}/join"), Some(token), Some(json!({}))).await;
        assert_eq!(status, 200, "{body}");
    }
    // Positions after every join, so that only the message wakes them.
    let mut sinces = Vec::new();
    for (_, token) in &pollers {
        let (status, body) = call(Method::GET, &format!("{base}/_matrix/client/v3/sync?timeout=0"), Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        sinces.push(body["next_batch"].as_str().unwrap().to_owned());
    }

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut stream = connect(&base).await;
        stream.write_all(VERSIONS).await.unwrap();
        assert_eq!(answer(&mut stream).await.expect("an answer").0, 200);
        idle.push(stream);
    }

    // 2,000 long-polls, each on a connection of its own.
    let mut polls = tokio::task::JoinSet::new();
    // One client: it opens a connection for each request in flight.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    for ((_, token), since) in pollers.iter().zip(&sinces) {
        for _ in 0..POLLS_EACH {
            let url = format!("{base}/_matrix/client/v3/sync?since={since}&timeout=60000");
            let (token, client) = (token.clone(), client.clone());
            polls.spawn(async move {
                let resp = client.get(url).bearer_auth(token).send().await.expect("long-poll sent");
                assert_eq!(resp.status(), 200);
                resp.json::<Value>().await.expect("a JSON sync answer")
            });
        }
    }
    // Ordinary requests while all that is open: each answered.
    for i in 0..20 {
        let whoami = alice.call(Method::GET, "/account/whoami", None).await;
        assert_eq!(whoami.0, 200, "{}", whoami.1);
        let (status, body) = call(Method::GET, &format!("{base}/_matrix/client/versions"), None, None).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let event_id = alice.say(&room, "wake", "everyone").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut woken = 0;
    while let Some(done) =
        tokio::time::timeout_at(deadline.into(), polls.join_next()).await.expect("long-polls not answered within 120 s")
    {
        let sync = done.expect("a long-poll task failed");
        let events = &sync["rooms"]["join"][&room]["timeline"]["events"];
        assert!(
            events.as_array().is_some_and(|e| e.iter().any(|e| e["event_id"] == event_id.as_str())),
            "a long-poll returned without the message: {sync}"
        );
        woken += 1;
    }
    assert_eq!(woken, POLLERS * POLLS_EACH);

    // The idle connections are all still open and served.
    for stream in idle.iter_mut().step_by(50) {
        stream.write_all(VERSIONS).await.unwrap();
        assert_eq!(answer(stream).await.expect("an idle connection was closed").0, 200);
    }
    drop(idle);
    assert!(server.terminate().await.unwrap().success());
}
