//! End-to-end encryption with matrix-sdk's own crypto (vodozemac), on
//! SQLite and PostgreSQL: officials exchange encrypted messages both ways
//! in a room that is encrypted because it is private, a colleague who
//! joins later reads from then on, a second device reads history from the
//! key backup, two users cross-sign and verify each other with emoji
//! (SAS), and a deleted device disappears from the other side's list. The
//! server never holds a plaintext: the stored events are checked too.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::verification::{SasVerification, Verification, VerificationRequest};
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier};
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedDeviceId, OwnedRoomId, RoomId, UserId};
use matrix_sdk::{Client, Room};
use reqwest::Method;
use serde_json::Value;

use crate::common::{PASSWORD, call, register};

/// Every wait of these tests: rounds of syncs of all clients, each round
/// bounded, the whole bounded.
const MAX_ROUNDS: usize = 40;
const MAX_WAIT: Duration = Duration::from_secs(90);

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_millis(500))
}

pub(crate) fn encryption(cross_signing: bool, backups: bool) -> EncryptionSettings {
    EncryptionSettings {
        auto_enable_cross_signing: cross_signing,
        backup_download_strategy: BackupDownloadStrategy::OneShot,
        auto_enable_backups: backups,
    }
}

/// A logged-in client with matrix-sdk's crypto, its keys uploaded.
async fn login(base: &str, name: &str, settings: EncryptionSettings) -> Client {
    let client = Client::builder().homeserver_url(base).with_encryption_settings(settings).build().await.unwrap();
    client.matrix_auth().login_username(name, PASSWORD).initial_device_display_name(name).send().await.unwrap();
    client.encryption().wait_for_e2ee_initialization_tasks().await;
    client
}

pub(crate) async fn new_user(base: &str, name: &str, settings: EncryptionSettings) -> Client {
    register(base, name).await;
    login(base, name, settings).await
}

/// Syncs every client once per round until `done` holds.
pub(crate) async fn sync_until<F, Fut>(clients: &[&Client], what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + MAX_WAIT;
    for _ in 0..MAX_ROUNDS {
        let syncs = clients.iter().map(|c| async move {
            tokio::time::timeout(Duration::from_secs(15), c.sync_once(settings()))
                .await
                .unwrap_or_else(|_| panic!("a sync of {} hung", c.user_id().unwrap()))
                .unwrap();
        });
        futures_util::future::join_all(syncs).await;
        if done().await {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
    }
    panic!("gave up waiting for: {what}");
}

/// Syncs every client once per round until `found` finds something.
async fn sync_until_some<T, F, Fut>(clients: &[&Client], what: &str, mut found: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let result = Mutex::new(None);
    sync_until(clients, what, || {
        let next = found();
        let result = &result;
        async move {
            let value = next.await;
            let found = value.is_some();
            *result.lock().unwrap() = value;
            found
        }
    })
    .await;
    result.into_inner().unwrap().expect("sync_until returns only once found")
}

/// The plaintext bodies the client's sync handed to its handlers
/// (decrypted ones included), in order.
pub(crate) fn collect_texts(client: &Client) -> Arc<Mutex<Vec<String>>> {
    let texts = Arc::new(Mutex::new(Vec::new()));
    let sink = texts.clone();
    client.add_event_handler(move |event: OriginalSyncRoomMessageEvent| {
        let sink = sink.clone();
        async move { sink.lock().unwrap().push(event.content.body().to_owned()) }
    });
    texts
}

pub(crate) fn has(texts: &Arc<Mutex<Vec<String>>>, text: &str) -> bool {
    texts.lock().unwrap().iter().any(|t| t == text)
}

pub(crate) async fn private_room(alice: &Client, invite: &[&Client]) -> OwnedRoomId {
    let mut request = create_room::v3::Request::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = invite.iter().map(|c| c.user_id().unwrap().to_owned()).collect();
    alice.create_room(request).await.unwrap().room_id().to_owned()
}

pub(crate) async fn join(client: &Client, room_id: &RoomId) -> Room {
    sync_until(&[client], "the invite", || async { client.get_room(room_id).is_some() }).await;
    client.join_room_by_id(room_id).await.unwrap();
    client.get_room(room_id).unwrap()
}

pub(crate) async fn say(client: &Client, room_id: &RoomId, text: &str) {
    let room = client.get_room(room_id).unwrap();
    room.send(RoomMessageEventContent::text_plain(text)).await.unwrap();
}

/// The room's events as the server stores them, read over plain HTTP.
async fn stored_events(base: &str, client: &Client, room_id: &RoomId) -> Vec<Value> {
    let token = client.access_token().unwrap();
    let url = format!("{base}/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100");
    let (status, body) = call(Method::GET, &url, Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    body["chunk"].as_array().unwrap().clone()
}

fn password_auth(user: &UserId) -> AuthData {
    AuthData::Password(Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(user.localpart().to_owned())),
        PASSWORD.to_owned(),
    ))
}

/// Alice and Bob exchange encrypted messages both ways in a private room
/// (encrypted by default); Carol, invited later, reads what is sent after
/// she joined and not what came before.
async fn exchange_and_late_joiner(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = new_user(&base, "alice", encryption(false, false)).await;
    let bob = new_user(&base, "bob", encryption(false, false)).await;
    let carol = new_user(&base, "carol", encryption(false, false)).await;
    let (bob_texts, alice_texts, carol_texts) = (collect_texts(&bob), collect_texts(&alice), collect_texts(&carol));

    let room_id = private_room(&alice, &[&bob]).await;
    let room = join(&bob, &room_id).await;
    sync_until(&[&alice, &bob], "the room is encrypted for both", || async {
        let encrypted = |c: &Client| c.get_room(&room_id).is_some_and(|r| r.encryption_state().is_encrypted());
        encrypted(&alice) && encrypted(&bob)
    })
    .await;
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());

    say(&alice, &room_id, "hello bob").await;
    sync_until(&[&alice, &bob], "Bob decrypts Alice's message", || async { has(&bob_texts, "hello bob") }).await;
    say(&bob, &room_id, "hello alice").await;
    sync_until(&[&alice, &bob], "Alice decrypts Bob's message", || async { has(&alice_texts, "hello alice") }).await;

    // The server holds ciphertext only.
    let stored = stored_events(&base, &alice, &room_id).await;
    let messages: Vec<&Value> = stored.iter().filter(|e| e["type"] == "m.room.encrypted").collect();
    assert_eq!(messages.len(), 2, "{stored:?}");
    assert!(stored.iter().all(|e| e["type"] != "m.room.message"), "{stored:?}");
    let raw = serde_json::to_string(&stored).unwrap();
    assert!(!raw.contains("hello bob") && !raw.contains("hello alice"));
    for m in &messages {
        assert_eq!(m["content"]["algorithm"], "m.megolm.v1.aes-sha2");
    }

    // Carol comes later: she reads from her join on.
    alice.get_room(&room_id).unwrap().invite_user_by_id(carol.user_id().unwrap()).await.unwrap();
    join(&carol, &room_id).await;
    sync_until(&[&alice, &bob, &carol], "Alice sees Carol joined", || async {
        alice.get_room(&room_id).unwrap().joined_members_count() == 3
    })
    .await;
    say(&alice, &room_id, "welcome carol").await;
    sync_until(&[&alice, &bob, &carol], "Carol and Bob decrypt the welcome", || async {
        has(&carol_texts, "welcome carol") && has(&bob_texts, "welcome carol")
    })
    .await;
    assert!(!has(&carol_texts, "hello bob"), "Carol was never sent the key of what came before her");
    let mut options = MessagesOptions::backward();
    options.limit = 20u32.into();
    let history = carol.get_room(&room_id).unwrap().messages(options).await.unwrap();
    let undecryptable = history
        .chunk
        .iter()
        .filter(|e| matches!(e.kind, matrix_sdk::deserialized_responses::TimelineEventKind::UnableToDecrypt { .. }))
        .count();
    assert_eq!(undecryptable, 2, "the two messages before Carol joined stay sealed to her");
}

on_both_backends!(exchange_and_late_joiner);

/// Bob's room keys go to the server-side backup; on a second device he
/// recovers with his recovery key and reads the history.
async fn key_backup_recovery(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = new_user(&base, "alice", encryption(true, false)).await;
    let bob = new_user(&base, "bob", encryption(true, true)).await;
    let bob_texts = collect_texts(&bob);
    let recovery_key = bob.encryption().recovery().enable().await.unwrap();

    let room_id = private_room(&alice, &[&bob]).await;
    join(&bob, &room_id).await;
    sync_until(&[&alice, &bob], "both see the room encrypted", || async {
        alice.get_room(&room_id).is_some_and(|r| r.encryption_state().is_encrypted())
            && bob.get_room(&room_id).is_some_and(|r| r.encryption_state().is_encrypted())
    })
    .await;
    say(&alice, &room_id, "minutes of the meeting").await;
    sync_until(&[&alice, &bob], "Bob decrypts the minutes", || async { has(&bob_texts, "minutes of the meeting") }).await;
    tokio::time::timeout(MAX_WAIT, bob.encryption().backups().wait_for_steady_state()).await.unwrap().unwrap();

    // The backup holds the session on the server (as ciphertext).
    let token = bob.access_token().unwrap();
    let (status, version) = call(Method::GET, &format!("{base}/_matrix/client/v3/room_keys/version"), Some(&token), None).await;
    assert_eq!(status, 200, "{version}");
    assert!(version["count"].as_u64().unwrap() >= 1, "{version}");

    // A new device: no keys until recovery, then the history decrypts.
    let bob2 = login(&base, "bob", encryption(true, false)).await;
    sync_until(&[&bob2], "the second device knows the room", || async { bob2.get_room(&room_id).is_some() }).await;
    bob2.encryption().recovery().recover(&recovery_key).await.unwrap();
    let mut decrypted = false;
    let deadline = Instant::now() + MAX_WAIT;
    for _ in 0..MAX_ROUNDS {
        let mut options = MessagesOptions::backward();
        options.limit = 20u32.into();
        let page = bob2.get_room(&room_id).unwrap().messages(options).await.unwrap();
        decrypted = page.chunk.iter().any(|e| {
            matches!(e.kind, matrix_sdk::deserialized_responses::TimelineEventKind::Decrypted(_))
                && e.raw().get_field::<Value>("content").ok().flatten().is_some_and(|c| c["body"] == "minutes of the meeting")
        });
        if decrypted || Instant::now() > deadline {
            break;
        }
        bob2.sync_once(settings()).await.unwrap();
    }
    assert!(decrypted, "the second device decrypts the history from the key backup");
}

on_both_backends!(key_backup_recovery);

/// Alice and Bob, each with cross-signing, verify each other's devices
/// interactively with emoji (SAS over to-device messages); afterwards each
/// trusts the other's device and identity.
async fn cross_signing_and_sas(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = new_user(&base, "alice", encryption(true, false)).await;
    let bob = new_user(&base, "bob", encryption(true, false)).await;
    let (alice_id, bob_id) = (alice.user_id().unwrap().to_owned(), bob.user_id().unwrap().to_owned());
    let room_id = private_room(&alice, &[&bob]).await;
    join(&bob, &room_id).await;
    let bob_device_id = bob.device_id().unwrap().to_owned();
    sync_until(&[&alice, &bob], "Alice knows Bob's device and identity", || async {
        alice.encryption().get_device(&bob_id, &bob_device_id).await.unwrap().is_some()
            && alice.encryption().get_user_identity(&bob_id).await.unwrap().is_some()
    })
    .await;
    let bob_device = alice.encryption().get_device(&bob_id, &bob_device_id).await.unwrap().unwrap();
    assert!(!bob_device.is_verified());
    let request: VerificationRequest = bob_device.request_verification().await.unwrap();
    let flow_id = request.flow_id().to_owned();

    let bob_request = sync_until_some(&[&alice, &bob], "Bob receives the verification request", || async {
        bob.encryption().get_verification_request(&alice_id, &flow_id).await
    })
    .await;
    bob_request.accept().await.unwrap();
    sync_until(&[&alice, &bob], "the request is ready", || async { request.is_ready() }).await;
    let alice_sas: SasVerification = request.start_sas().await.unwrap().expect("SAS starts");
    let bob_sas = sync_until_some(&[&alice, &bob], "Bob sees the SAS", || async {
        match bob.encryption().get_verification(&alice_id, &flow_id).await {
            Some(Verification::SasV1(sas)) => Some(sas),
            _ => None,
        }
    })
    .await;
    bob_sas.accept().await.unwrap();
    sync_until(&[&alice, &bob], "both can show the emoji", || async {
        alice_sas.can_be_presented() && bob_sas.can_be_presented()
    })
    .await;
    let symbols = |sas: &SasVerification| sas.emoji().unwrap().iter().map(|e| e.symbol).collect::<Vec<_>>();
    assert_eq!(symbols(&alice_sas), symbols(&bob_sas), "both sides show the same emoji");
    alice_sas.confirm().await.unwrap();
    bob_sas.confirm().await.unwrap();
    sync_until(&[&alice, &bob], "the verification is done on both sides", || async { alice_sas.is_done() && bob_sas.is_done() })
        .await;
    sync_until(&[&alice, &bob], "each trusts the other's device and identity", || async {
        let alice_trusts = alice.encryption().get_device(&bob_id, &bob_device_id).await.unwrap().unwrap().is_verified()
            && alice.encryption().get_user_identity(&bob_id).await.unwrap().unwrap().is_verified();
        let alice_device = alice.device_id().unwrap();
        let bob_trusts = bob.encryption().get_device(&alice_id, alice_device).await.unwrap().unwrap().is_verified()
            && bob.encryption().get_user_identity(&alice_id).await.unwrap().unwrap().is_verified();
        alice_trusts && bob_trusts
    })
    .await;
}

on_both_backends!(cross_signing_and_sas);

/// Bob logs in on a second device and then deletes it; Alice, who shares
/// an encrypted room with him, sees it come and go (`device_lists` of her
/// sync tells her to fetch his keys again).
async fn deleted_device_disappears(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = new_user(&base, "alice", encryption(false, false)).await;
    let bob = new_user(&base, "bob", encryption(false, false)).await;
    let bob_id = bob.user_id().unwrap().to_owned();
    let room_id = private_room(&alice, &[&bob]).await;
    join(&bob, &room_id).await;
    let bob_devices = |client: &Client| {
        let client = client.clone();
        let bob_id = bob_id.clone();
        async move {
            let devices = client.encryption().get_user_devices(&bob_id).await.unwrap();
            let mut ids: Vec<OwnedDeviceId> = devices.devices().map(|d| d.device_id().to_owned()).collect();
            ids.sort();
            ids
        }
    };
    sync_until(&[&alice, &bob], "Alice knows Bob's device", || async { bob_devices(&alice).await.len() == 1 }).await;

    let bob2 = login(&base, "bob", encryption(false, false)).await;
    let second = bob2.device_id().unwrap().to_owned();
    sync_until(&[&alice, &bob, &bob2], "Alice sees Bob's second device", || async {
        bob_devices(&alice).await.contains(&second)
    })
    .await;

    bob.delete_devices(std::slice::from_ref(&second), Some(password_auth(&bob_id))).await.unwrap();
    sync_until(&[&alice, &bob], "Alice no longer lists the deleted device", || async {
        !bob_devices(&alice).await.contains(&second)
    })
    .await;
    assert_eq!(bob_devices(&alice).await, vec![bob.device_id().unwrap().to_owned()]);
    // Its keys are gone from the server too.
    let token = alice.access_token().unwrap();
    let (status, keys) = call(
        Method::POST,
        &format!("{base}/_matrix/client/v3/keys/query"),
        Some(&token),
        Some(serde_json::json!({ "device_keys": { bob_id.as_str(): [] } })),
    )
    .await;
    assert_eq!(status, 200, "{keys}");
    let listed: Vec<&String> = keys["device_keys"][bob_id.as_str()].as_object().unwrap().keys().collect();
    assert_eq!(listed, vec![bob.device_id().unwrap().as_str()]);
}

on_both_backends!(deleted_device_disappears);
