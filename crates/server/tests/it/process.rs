//! The `chancery` binary as an operator runs it: config errors, the CLI,
//! graceful shutdown, and crash safety under SIGKILL.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chancery_testkit::{Backend, ChildServer, test_config};
use reqwest::Method;
use serde_json::json;
use tokio::sync::Mutex;

use crate::common::{PASSWORD, call, login};

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

/// Kill -9 in the middle of a burst of registrations and logins: after a
/// restart every acknowledged account and device is there and the
/// database is sound.
async fn crash_safety(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(backend, dir.path()).await.unwrap();
    let mut server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let base = server.base_url.clone();
    let acked_accounts = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked_tokens = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (base, accounts, tokens, stop) = (base.clone(), acked_accounts.clone(), acked_tokens.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Bounded: at most 40 accounts per worker.
            for i in 0..40 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("w{w}u{i}");
                let body = json!({"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}});
                let Ok(resp) = crate::common::http().post(format!("{base}/_matrix/client/v3/register")).json(&body).send().await
                else {
                    break;
                };
                let Ok(reg) = resp.json::<serde_json::Value>().await else { break };
                let Some(token) = reg["access_token"].as_str() else { break };
                accounts.lock().await.push(name.clone());
                tokens.lock().await.push((reg["user_id"].as_str().unwrap().to_owned(), token.to_owned()));
                let body =
                    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": PASSWORD});
                let Ok(resp) = crate::common::http().post(format!("{base}/_matrix/client/v3/login")).json(&body).send().await
                else {
                    break;
                };
                let Ok(login) = resp.json::<serde_json::Value>().await else { break };
                let Some(token) = login["access_token"].as_str() else { break };
                tokens.lock().await.push((login["user_id"].as_str().unwrap().to_owned(), token.to_owned()));
            }
        }));
    }
    // Kill once a good number of writes were acknowledged (bounded wait).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked_tokens.lock().await.len() < 30 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let accounts = acked_accounts.lock().await.clone();
    let tokens = acked_tokens.lock().await.clone();
    assert!(tokens.len() >= 30, "only {} acknowledged writes before the kill", tokens.len());

    if backend == Backend::Sqlite {
        let db = rusqlite::Connection::open(dir.path().join("chancery.db")).unwrap();
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        let orphans: i64 = db.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
        assert_eq!(orphans, 0);
    }

    let server = ChildServer::spawn(BIN.as_ref(), &config).await.unwrap();
    let base = server.base_url.clone();
    for (user_id, token) in &tokens {
        let (status, body) = call(Method::GET, &format!("{base}/_matrix/client/v3/account/whoami"), Some(token), None).await;
        assert_eq!(status, 200, "acknowledged device of {user_id} lost: {body}");
        assert_eq!(body["user_id"], user_id.as_str());
    }
    for name in accounts.iter().take(10) {
        assert_eq!(login(&base, name, PASSWORD).await.0, 200, "{name}");
    }
    assert!(server.terminate().await.unwrap().success());
}

on_both_backends!(crash_safety);
