//! End-to-end encryption with a second, independent client stack:
//! matrix-js-sdk with its Rust crypto (WebAssembly), run by Node from
//! `crates/server/tests/js/`, talks to matrix-sdk through the server. Bob is
//! the JS user, one new device per step; alice is matrix-sdk.
//!
//! 1. exchange: bob joins alice's encrypted room and sends; alice decrypts
//!    it and answers; bob decrypts the answer.
//! 2. bootstrap: a new bob device sets up cross-signing (with
//!    user-interactive auth), secret storage under a recovery key and a key
//!    backup, sends, and waits until the room key is backed up; alice
//!    decrypts that message and sees bob's master key.
//! 3. restore: another new bob device given only the recovery key takes
//!    the cross-signing keys from secret storage (so it is cross-signed, as
//!    alice sees), restores the backup and decrypts step 2's message from
//!    `/messages`.
//!
//! The Node steps need `node` (20 or newer) and `npm ci` run in
//! `crates/server/tests/js/`: `./scripts/test` does both. They never skip.
//! Each step is a script of its own that takes any homeserver's URL, so
//! the same steps can be run by hand against Synapse (`bench/synapse.sh`)
//! to tell a server bug from a test bug.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId};
use matrix_sdk::{Client, Room};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{PASSWORD, call, register};

/// The bound on one Node step, past the step's own `--timeout-ms` so that
/// the step normally reports its own time-out with what it was doing.
const STEP_LIMIT: Duration = Duration::from_secs(150);
/// The step's own bound on the whole step and on each of its waits.
const STEP_TIMEOUT_MS: &str = "120000";
const STEP_WAIT_MS: &str = "60000";

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// A Node step running in the background: its output is read as it comes
/// (so a chatty step never blocks on a full pipe) and bounded in time.
struct NodeStep {
    name: &'static str,
    task: tokio::task::JoinHandle<Result<std::io::Result<std::process::Output>, tokio::time::error::Elapsed>>,
}

impl NodeStep {
    /// Starts `node tests/js/{name}.mjs --homeserver BASE --user USER
    /// --password PASSWORD --{key} {value}...`.
    fn start(name: &'static str, base: &str, user: &str, args: &[(&str, &str)]) -> NodeStep {
        let dir = js_dir();
        assert!(
            dir.join("node_modules/matrix-js-sdk").is_dir()
                && dir.join("node_modules/@matrix-org/matrix-sdk-crypto-wasm").is_dir(),
            "the JS client is not installed: run `npm ci` in {} (./scripts/test does)",
            dir.display()
        );
        // NODE names another Node binary; the machine's `node` otherwise.
        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
        let mut command = tokio::process::Command::new(&node);
        command.arg(dir.join(format!("{name}.mjs"))).current_dir(&dir);
        command.args(["--homeserver", base, "--user", user, "--password", PASSWORD, "--timeout-ms", STEP_TIMEOUT_MS]);
        for (key, value) in args {
            command.arg(format!("--{key}")).arg(value);
        }
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {:?} ({e}): the JS client tests need Node.js 20 or newer (Debian package nodejs; ./scripts/test installs it)",
                node
            )
        });
        // Dropping the output future on time-out drops the child, which
        // kill_on_drop ends.
        let task = tokio::spawn(tokio::time::timeout(STEP_LIMIT, child.wait_with_output()));
        NodeStep { name, task }
    }

    fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the step and returns its JSON result line; panics with the
    /// step's own message and the end of its log if it failed.
    async fn result(self) -> Value {
        let name = self.name;
        let output = match self.task.await.expect("the node step task") {
            Err(_) => panic!("the node step {name} did not end within {} s", STEP_LIMIT.as_secs()),
            Ok(output) => output.unwrap_or_else(|e| panic!("the node step {name}: {e}")),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let failed: Vec<&str> = stderr.lines().filter(|l| l.starts_with("FAILED:")).collect();
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            panic!(
                "the node step {name} failed ({}): {}\n--- stdout:\n{stdout}\n--- last lines of stderr:\n{tail}",
                output.status,
                failed.join(" / ")
            );
        }
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let result: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("the node step {name} printed no JSON result ({e}):\n{stdout}\n{stderr}"));
        assert_eq!(result["step"], name, "{result}");
        result
    }
}

/// The messages a matrix-sdk client received through sync, with whether
/// they came encrypted and from which device.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Received>>>);

#[derive(Clone, Debug)]
struct Received {
    room: OwnedRoomId,
    sender: String,
    body: String,
    sender_device: Option<String>,
}

impl Inbox {
    /// Collects the decrypted `m.room.message` events of `client`; plain
    /// ones are not collected, so nothing sent in the clear passes.
    fn of(client: &Client) -> Inbox {
        let inbox = Inbox::default();
        let sink = inbox.clone();
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, room: Room, encryption: Option<EncryptionInfo>| {
            let sink = sink.clone();
            async move {
                let Some(encryption) = encryption else { return };
                sink.0.lock().unwrap().push(Received {
                    room: room.room_id().to_owned(),
                    sender: event.sender.to_string(),
                    body: event.content.body().to_owned(),
                    sender_device: encryption.sender_device.map(|d| d.to_string()),
                });
            }
        });
        inbox
    }

    fn find(&self, room: &RoomId, sender: &str, body: &str) -> Option<Received> {
        self.0.lock().unwrap().iter().find(|r| r.room == room && r.sender == sender && r.body == body).cloned()
    }
}

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_secs(2))
}

/// One sync of `client`, bounded in time.
async fn sync_once(client: &Client) {
    tokio::time::timeout(Duration::from_secs(15), client.sync_once(settings()))
        .await
        .unwrap_or_else(|_| panic!("a sync of {} hung", client.user_id().unwrap()))
        .unwrap();
}

/// Syncs `client` until `done` returns a value, for at most 90 s. `None`
/// if the node `step`, which waits on what `done` checks, ended first: the
/// caller then reports the step's own outcome.
async fn sync_until<T>(
    client: &Client,
    what: &str,
    step: Option<&NodeStep>,
    mut done: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        sync_once(client).await;
        if let Some(value) = done().await {
            return Some(value);
        }
        if step.is_some_and(NodeStep::finished) {
            return None;
        }
    }
    panic!("{} never saw {what} within 90 s", client.user_id().unwrap());
}

/// Asserts that the server answers the key upload endpoint at all, so that
/// a server without end-to-end encryption fails here with its answer
/// rather than later in a client's log.
async fn assert_keys_endpoint(base: &str, token: &str) {
    let (status, body) = call(Method::POST, &format!("{base}/_matrix/client/v3/keys/upload"), Some(token), Some(json!({}))).await;
    assert_eq!(status, 200, "POST /keys/upload with nothing to upload: {body}");
    assert!(body["one_time_key_counts"].is_object(), "{body}");
}

/// Asserts that `/keys/query` serves the device keys of `user`'s `device`.
async fn assert_device_published(base: &str, token: &str, user: &str, device: &str) {
    let url = format!("{base}/_matrix/client/v3/keys/query");
    let (status, body) = call(Method::POST, &url, Some(token), Some(json!({"device_keys": {user: []}}))).await;
    assert_eq!(status, 200, "POST /keys/query: {body}");
    let keys = &body["device_keys"][user][device];
    assert_eq!(keys["device_id"], device, "{body}");
    assert!(keys["keys"][format!("ed25519:{device}")].is_string(), "{body}");
}

async fn logged_in(base: &str, name: &str) -> Client {
    let client = Client::builder().homeserver_url(base).build().await.unwrap();
    client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
    client
}

/// The whole flow against the homeserver at `base`; `alice` and `bob` are
/// free user names there.
async fn flow(base: &str, alice_name: &str, bob_name: &str) {
    let (alice_id, alice_token, _) = register(base, alice_name).await;
    let (bob_id, _, _) = register(base, bob_name).await;
    assert_keys_endpoint(base, &alice_token).await;

    let alice = logged_in(base, alice_name).await;
    let inbox = Inbox::of(&alice);
    // The first sync uploads alice's device and one-time keys.
    sync_once(&alice).await;
    let alice_device = alice.device_id().unwrap().to_string();
    assert_device_published(base, &alice_token, &alice_id, &alice_device).await;

    let mut request = create_room::v3::Request::new();
    request.name = Some("Sealed".into());
    request.invite = vec![bob_id.parse().unwrap()];
    request.initial_state =
        vec![InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any()];
    let room = alice.create_room(request).await.unwrap();
    let room_id = room.room_id().to_owned();
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());

    // 1. exchange.
    let exchange = NodeStep::start(
        "exchange",
        base,
        bob_name,
        &[("room", room_id.as_str()), ("send", "From the JS side"), ("expect-from", &alice_id), ("wait-ms", STEP_WAIT_MS)],
    );
    let seen = sync_until(&alice, "bob's encrypted message", Some(&exchange), async || {
        inbox.find(&room_id, &bob_id, "From the JS side")
    })
    .await;
    let Some(from_js) = seen else {
        let result = exchange.result().await;
        panic!("the exchange step ended before alice decrypted bob's message: {result}");
    };
    // Bob's device keys are on the server now: alice's answer is encrypted
    // for that device.
    room.send(RoomMessageEventContent::text_plain("From matrix-sdk")).await.unwrap();
    let exchanged = exchange.result().await;
    assert_eq!(exchanged["user_id"], bob_id, "{exchanged}");
    assert_eq!(from_js.sender_device.as_deref(), exchanged["device_id"].as_str(), "{exchanged}");
    assert_eq!(
        (&exchanged["received"]["sender"], &exchanged["received"]["body"], &exchanged["received"]["sender_device"]),
        (&json!(alice_id), &json!("From matrix-sdk"), &json!(alice_device)),
        "{exchanged}"
    );

    // 2. bootstrap.
    let bootstrap = NodeStep::start(
        "bootstrap",
        base,
        bob_name,
        &[("room", room_id.as_str()), ("send", "For the record"), ("wait-ms", STEP_WAIT_MS)],
    )
    .result()
    .await;
    for key in ["cross_signing_ready", "secret_storage_ready"] {
        assert_eq!(bootstrap[key], true, "{bootstrap}");
    }
    assert!(bootstrap["backed_up_keys"].as_u64() >= Some(1), "{bootstrap}");
    let recovery_key = bootstrap["recovery_key"].as_str().expect("a recovery key").to_owned();
    let record_event = bootstrap["sent_event_id"].as_str().expect("the sent event").to_owned();
    let record = sync_until(&alice, "bob's message from the bootstrapped device", None, async || {
        inbox.find(&room_id, &bob_id, "For the record")
    })
    .await
    .expect("no step to end early");
    assert_eq!(record.sender_device.as_deref(), bootstrap["device_id"].as_str(), "{bootstrap}");
    // matrix-sdk reads the same master key from /keys/query.
    let bob_user: OwnedUserId = bob_id.parse().unwrap();
    let identity = alice.encryption().request_user_identity(&bob_user).await.unwrap().expect("bob's cross-signing identity");
    let master = identity.master_key().get_first_key().expect("a master key").to_base64();
    assert_eq!(json!(master), bootstrap["master_key"], "{bootstrap}");

    // 3. restore, on a fresh device with only the recovery key.
    let restored = NodeStep::start(
        "restore",
        base,
        bob_name,
        &[("room", room_id.as_str()), ("recovery-key", &recovery_key), ("event", &record_event)],
    )
    .result()
    .await;
    assert_eq!(restored["backup_version"], bootstrap["backup_version"], "{restored}");
    assert!(restored["imported"].as_u64() >= Some(1), "{restored}");
    assert_eq!(restored["device_cross_signed"], true, "{restored}");
    assert_eq!(
        (&restored["event"]["event_id"], &restored["event"]["sender"], &restored["event"]["body"]),
        (&json!(record_event), &json!(bob_id), &json!("For the record")),
        "{restored}"
    );
    // The restored device's cross-signature reaches alice through bob's
    // device-list change.
    let restored_device: OwnedDeviceId = restored["device_id"].as_str().expect("the restored device").into();
    sync_until(&alice, "bob's restored device cross-signed", None, async || {
        let device = alice.encryption().get_device(&bob_user, &restored_device).await.unwrap()?;
        device.is_cross_signed_by_owner().then_some(())
    })
    .await
    .expect("no step to end early");
}

async fn js_client(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    flow(&server.base_url, "alice", "bob").await;
    server.stop().await.unwrap();
}

on_both_backends!(js_client);
