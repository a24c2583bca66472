//! Dehydrated devices (MSC3814) with real crypto (vodozemac), on SQLite
//! and PostgreSQL: Alice writes in an encrypted room while Bob's only
//! device is his dehydrated one; her matrix-sdk shares the room key with
//! it as with any device; Bob's next login rehydrates it, reads its inbox
//! and decrypts the message. matrix-sdk's `Client` does not expose
//! dehydration (short of its `testing` feature), so Bob's devices are
//! standalone `OlmMachine`s of matrix-sdk-crypto, driven over plain HTTP
//! with ruma's request types.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::ruma::api::auth_scheme::{AccessToken, SendAccessToken};
use matrix_sdk::ruma::api::client::dehydrated_device::{delete_dehydrated_device, get_dehydrated_device, get_events};
use matrix_sdk::ruma::api::client::keys::{get_keys, upload_signing_keys};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
use matrix_sdk::ruma::api::client::to_device::send_event_to_device;
use matrix_sdk::ruma::api::path_builder::VersionHistory;
use matrix_sdk::ruma::api::{IncomingResponse, OutgoingRequest, SupportedVersions};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{DeviceId, OwnedDeviceId, OwnedUserId, RoomId, TransactionId, UserId};
use matrix_sdk_crypto::store::types::DehydratedDeviceKey;
use matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent;
use matrix_sdk_crypto::types::requests::{AnyIncomingResponse, AnyOutgoingRequest};
use matrix_sdk_crypto::{DecryptionSettings, OlmMachine, TrustRequirement};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{PASSWORD, assert_error, call, http, login, ok, register, urlencode};
use crate::e2ee::{encryption, new_user, sync_until};

/// Bounds of every loop here: the machine's requests until it has none
/// left, and the pages of the dehydrated device's inbox.
const MAX_ROUNDS: usize = 20;
const MAX_WAIT: Duration = Duration::from_secs(60);

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

/// The server's address and the versions it advertises, which ruma needs
/// to pick an endpoint's path.
struct Api {
    base: String,
    versions: SupportedVersions,
}

impl Api {
    async fn new(base: &str) -> Api {
        let (status, body) = call(Method::GET, &format!("{base}/_matrix/client/versions"), None, None).await;
        assert_eq!(status, 200, "{body}");
        let versions: Vec<String> = serde_json::from_value(body["versions"].clone()).unwrap();
        let features: BTreeMap<String, bool> = serde_json::from_value(body["unstable_features"].clone()).unwrap_or_default();
        Api { base: base.to_owned(), versions: SupportedVersions::from_parts(&versions, &features) }
    }

    /// Sends a ruma request with `token` and parses the answer, which must
    /// be a success.
    async fn send<R>(&self, token: &str, request: R) -> R::IncomingResponse
    where
        R: OutgoingRequest<Authentication = AccessToken, PathBuilder = VersionHistory>,
    {
        let request = request
            .try_into_http_request::<Vec<u8>>(&self.base, SendAccessToken::Always(token), Cow::Borrowed(&self.versions))
            .unwrap();
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let answer = http().request(parts.method, &url).headers(parts.headers).body(body).send().await.unwrap();
        let status = answer.status();
        let body = answer.bytes().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {}", String::from_utf8_lossy(&body));
        let answer = http::Response::builder().status(status).body(body).unwrap();
        R::IncomingResponse::try_from_http_response(answer).unwrap_or_else(|e| panic!("{url}: {e}"))
    }
}

/// One of Bob's logins with its own Olm machine (kept in memory).
struct BobDevice {
    token: String,
    machine: OlmMachine,
}

impl BobDevice {
    async fn new(user_id: &str, device_id: &str, token: String) -> BobDevice {
        let user_id = UserId::parse(user_id).unwrap();
        let device_id: OwnedDeviceId = device_id.into();
        BobDevice { token, machine: OlmMachine::new(&user_id, &device_id).await }
    }

    async fn login(base: &str) -> BobDevice {
        let (status, body) = login(base, "bob", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_owned();
        BobDevice::new(body["user_id"].as_str().unwrap(), body["device_id"].as_str().unwrap(), token).await
    }

    fn device_id(&self) -> &DeviceId {
        self.machine.device_id()
    }

    /// Sends what the machine asks for (its keys, queries of keys) until
    /// it asks for nothing more.
    async fn send_outgoing(&self, api: &Api) {
        for _ in 0..MAX_ROUNDS {
            let requests = self.machine.outgoing_requests().await.unwrap();
            if requests.is_empty() {
                return;
            }
            for request in requests {
                self.send_request(api, request.request_id(), request.request()).await;
            }
        }
        panic!("the Olm machine still had requests after {MAX_ROUNDS} rounds");
    }

    async fn send_request(&self, api: &Api, id: &TransactionId, request: &AnyOutgoingRequest) {
        let (machine, token) = (&self.machine, self.token.as_str());
        match request {
            AnyOutgoingRequest::KeysUpload(upload) => {
                machine.mark_request_as_sent(id, &api.send(token, upload.clone()).await).await.unwrap();
            }
            AnyOutgoingRequest::KeysQuery(query) => {
                let mut ruma = get_keys::v3::Request::new();
                ruma.device_keys = query.device_keys.clone();
                machine.mark_request_as_sent(id, &api.send(token, ruma).await).await.unwrap();
            }
            AnyOutgoingRequest::KeysClaim(claim) => {
                machine.mark_request_as_sent(id, &api.send(token, claim.clone()).await).await.unwrap();
            }
            AnyOutgoingRequest::ToDeviceRequest(to_device) => {
                let ruma = send_event_to_device::v3::Request::new_raw(
                    to_device.event_type.clone(),
                    to_device.txn_id.clone(),
                    to_device.messages.clone(),
                );
                machine.mark_request_as_sent(id, &api.send(token, ruma).await).await.unwrap();
            }
            AnyOutgoingRequest::SignatureUpload(signatures) => {
                machine.mark_request_as_sent(id, &api.send(token, signatures.clone()).await).await.unwrap();
            }
            AnyOutgoingRequest::RoomMessage(message) => panic!("no in-room verification here: {message:?}"),
        }
    }

    /// A new cross-signing identity (master, self-signing, user-signing
    /// keys) uploaded, and this device signed by it. The first upload of
    /// signing keys needs no interactive auth.
    async fn bootstrap_cross_signing(&self, api: &Api) {
        let requests = self.machine.bootstrap_cross_signing(false).await.unwrap();
        if let Some(keys) = requests.upload_keys_req {
            self.send_request(api, keys.request_id(), keys.request()).await;
        }
        let keys = requests.upload_signing_keys_req;
        let mut upload = upload_signing_keys::v3::Request::new();
        upload.master_key = keys.master_key.map(|k| k.to_raw());
        upload.self_signing_key = keys.self_signing_key.map(|k| k.to_raw());
        upload.user_signing_key = keys.user_signing_key.map(|k| k.to_raw());
        let uploaded = api.send(&self.token, upload).await;
        self.machine
            .mark_request_as_sent(&TransactionId::new(), AnyIncomingResponse::SigningKeysUpload(&uploaded))
            .await
            .unwrap();
        let signed = api.send(&self.token, requests.upload_signatures_req).await;
        assert!(signed.failures.is_empty(), "{:?}", signed.failures);
    }

    /// A page of the dehydrated device's inbox after `next_batch`.
    async fn inbox(&self, api: &Api, device_id: &DeviceId, next_batch: Option<String>) -> get_events::unstable::Response {
        let mut request = get_events::unstable::Request::new(device_id.to_owned());
        request.next_batch = next_batch;
        api.send(&self.token, request).await
    }
}

/// The device keys `/keys/query` lists for `user_id`, and the whole answer.
async fn listed_devices(base: &str, token: &str, user_id: &str) -> (Vec<String>, Value) {
    let query = json!({ "device_keys": { user_id: [] } });
    let answer = ok(Method::POST, format!("{base}/_matrix/client/v3/keys/query"), token, Some(query)).await;
    let devices = answer["device_keys"][user_id].as_object().unwrap_or_else(|| panic!("{answer}"));
    (devices.keys().cloned().collect(), answer)
}

/// The room's encrypted events as the server holds them.
async fn encrypted_events(base: &str, token: &str, room_id: &RoomId) -> Vec<Raw<EncryptedEvent>> {
    let url = format!("{base}/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100");
    let page = ok(Method::GET, url, token, None).await;
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.encrypted")
        .map(|e| Raw::from_json(serde_json::value::to_raw_value(e).unwrap()))
        .collect()
}

/// Bob's dehydrated device is his only one when Alice writes to him; his
/// next login rehydrates it and decrypts her message with the room key
/// the dehydrated device was sent. Then the server's side of it: the
/// inbox acknowledged by `next_batch` stays empty, and the deleted
/// dehydrated device disappears from `/keys/query` and Alice's list.
async fn message_to_dehydrated_device_is_read_after_rehydration(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let api = Api::new(&base).await;
    let alice = new_user(&base, "alice", encryption(false, false)).await;

    // Bob's first device: its keys, a cross-signing identity, and a
    // dehydrated device signed by his self-signing key.
    let (bob_id, token, first_device) = register(&base, "bob").await;
    let bob_user: OwnedUserId = UserId::parse(bob_id.as_str()).unwrap();
    let bob1 = BobDevice::new(&bob_id, &first_device, token).await;
    bob1.send_outgoing(&api).await;
    bob1.bootstrap_cross_signing(&api).await;
    let pickle_key = DehydratedDeviceKey::new();
    let dehydrated = bob1.machine.dehydrated_devices().create().await.unwrap();
    let upload = dehydrated.keys_for_upload("Dehydrated device".to_owned(), &pickle_key).await.unwrap();
    let dehydrated_id = upload.device_id.clone();
    assert_eq!(api.send(&bob1.token, upload).await.device_id, dehydrated_id);

    // Bob joins Alice's encrypted room, then logs out: the dehydrated
    // device is all he has left.
    let mut request = create_room::v3::Request::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob_user.clone()];
    let room_id = alice.create_room(request).await.unwrap().room_id().to_owned();
    ok(Method::POST, format!("{base}/_matrix/client/v3/join/{room_id}"), &bob1.token, Some(json!({}))).await;
    ok(Method::POST, format!("{base}/_matrix/client/v3/logout"), &bob1.token, Some(json!({}))).await;

    let alice_token = alice.access_token().unwrap();
    let (listed, answer) = listed_devices(&base, &alice_token, &bob_id).await;
    assert_eq!(listed, vec![dehydrated_id.to_string()], "{answer}");
    let keys = &answer["device_keys"][&bob_id][dehydrated_id.as_str()];
    assert_eq!(keys["dehydrated"], true, "{keys}");
    let self_signing = answer["self_signing_keys"][&bob_id]["keys"].as_object().unwrap_or_else(|| panic!("{answer}"));
    let self_signing_key_id = self_signing.keys().next().unwrap();
    assert!(keys["signatures"][&bob_id][self_signing_key_id].is_string(), "signed by the self-signing key: {keys}");

    let first_device: OwnedDeviceId = first_device.into();
    sync_until(&[&alice], "Alice sees Bob joined and knows his dehydrated device only", || async {
        let joined =
            alice.get_room(&room_id).is_some_and(|r| r.encryption_state().is_encrypted() && r.joined_members_count() == 2);
        let device = |id: OwnedDeviceId| {
            let (alice, bob_user) = (alice.clone(), bob_user.clone());
            async move { alice.encryption().get_device(&bob_user, &id).await.unwrap() }
        };
        joined
            && device(dehydrated_id.clone()).await.is_some_and(|d| d.is_dehydrated())
            && device(first_device.clone()).await.is_none()
    })
    .await;
    let text = "minutes of the meeting you missed";
    alice.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain(text)).await.unwrap();

    // Bob's next login: the message is there, sealed to it.
    let bob2 = BobDevice::login(&base).await;
    assert_ne!(bob2.device_id(), dehydrated_id);
    let encrypted = encrypted_events(&base, &bob2.token, &room_id).await;
    assert_eq!(encrypted.len(), 1, "one encrypted message in the room");
    let untrusted = DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
    let before = bob2.machine.decrypt_room_event(&encrypted[0], &room_id, &untrusted).await;
    assert!(before.is_err(), "the new device has no room key before rehydration");

    // Rehydration: the device's private keys from the server, its inbox
    // read page by page until a page is empty.
    let stored = api.send(&bob2.token, get_dehydrated_device::unstable::Request::new()).await;
    assert_eq!(stored.device_id, dehydrated_id);
    let rehydrated =
        bob2.machine.dehydrated_devices().rehydrate(&pickle_key, &stored.device_id, stored.device_data).await.unwrap();
    let deadline = Instant::now() + MAX_WAIT;
    let mut next_batch = None;
    let mut room_keys = Vec::new();
    for page in 0.. {
        assert!(page < MAX_ROUNDS && Instant::now() < deadline, "the dehydrated device's inbox never ran dry");
        let events = bob2.inbox(&api, &dehydrated_id, next_batch.clone()).await;
        if events.events.is_empty() {
            break;
        }
        room_keys.extend(rehydrated.receive_events(events.events, &untrusted).await.unwrap());
        next_batch = Some(events.next_batch.expect("a page with events names where the next one starts"));
    }
    assert!(room_keys.iter().any(|k| k.room_id == room_id), "the room key came through the dehydrated device: {room_keys:?}");

    let decrypted = bob2.machine.decrypt_room_event(&encrypted[0], &room_id, &untrusted).await.unwrap();
    let event: Value = serde_json::from_str(decrypted.event.json().get()).unwrap();
    assert_eq!(event["type"], "m.room.message", "{event}");
    assert_eq!(event["sender"], alice.user_id().unwrap().as_str(), "{event}");
    assert_eq!(event["content"]["body"], text, "{event}");

    // Read up to the last `next_batch`, the messages were acknowledged:
    // they come neither after it nor from the start.
    assert!(bob2.inbox(&api, &dehydrated_id, next_batch).await.events.is_empty());
    assert!(bob2.inbox(&api, &dehydrated_id, None).await.events.is_empty(), "acknowledged messages are deleted");

    // Deleted: gone from the server and from Alice's view.
    assert_eq!(api.send(&bob2.token, delete_dehydrated_device::unstable::Request::new()).await.device_id, dehydrated_id);
    let (listed, answer) = listed_devices(&base, &alice_token, &bob_id).await;
    assert!(!listed.contains(&dehydrated_id.to_string()), "{answer}");
    let url = format!("{base}{DEHYDRATED}");
    assert_error(&call(Method::GET, &url, Some(&bob2.token), None).await, 404, "M_NOT_FOUND");
    // Dehydrated device ids are unpadded base64 (of the device's Curve25519
    // key): they may hold a `/`.
    let events_url = format!("{url}/{}/events", urlencode(dehydrated_id.as_str()));
    assert_error(&call(Method::POST, &events_url, Some(&bob2.token), Some(json!({}))).await, 404, "M_NOT_FOUND");
    sync_until(&[&alice], "Alice no longer knows the dehydrated device", || async {
        alice.encryption().get_device(&bob_user, &dehydrated_id).await.unwrap().is_none()
    })
    .await;
}

on_both_backends!(message_to_dehydrated_device_is_read_after_rehydration);
