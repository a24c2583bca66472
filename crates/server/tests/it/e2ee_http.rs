//! The encryption endpoints over plain HTTP, on SQLite and PostgreSQL:
//! bad keys (unsigned, wrongly signed, someone else's, unknown algorithms,
//! too many, replaced), to-device messages (idempotent, `*`, delivered
//! once and deleted once acknowledged, bounded), one-time keys handed out
//! once under 50 concurrent claims, key backups (`M_NOT_FOUND`,
//! `M_WRONG_ROOM_KEYS_VERSION`, the better key kept) and `/keys/changes`.
//! Keys are signed with real ed25519 keys; every refusal leaves what was
//! stored as it was.

use chancery_proto::ruma::CanonicalJsonValue;
use chancery_proto::ruma::serde::Base64;
use chancery_proto::ruma::serde::base64::Standard;
use chancery_proto::ruma::signatures::{Ed25519KeyPair, sign_json};
use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{User, assert_error, login, register};

/// A device of a user, with its own ed25519 identity key.
struct Device {
    user: User,
    device_id: String,
    pair: Ed25519KeyPair,
}

fn key_pair(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
}

fn public(pair: &Ed25519KeyPair) -> String {
    Base64::<Standard>::new(pair.public_key().to_vec()).encode()
}

/// `value` signed by `signer` with `pair`.
fn signed(mut value: Value, signer: &str, pair: &Ed25519KeyPair) -> Value {
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(value.clone()).unwrap() else { unreachable!() };
    sign_json(signer, pair, &mut object).unwrap();
    value["signatures"] = serde_json::to_value(object.get("signatures").unwrap()).unwrap();
    value
}

impl Device {
    async fn new(base: &str, name: &str) -> Device {
        let (id, token, device_id) = register(base, name).await;
        Device { pair: key_pair(&device_id), user: User { base: base.into(), token, id }, device_id }
    }

    /// Another login of the same user.
    async fn login(&self, name: &str) -> Device {
        let (status, body) = login(&self.user.base, name, crate::common::PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let device_id = body["device_id"].as_str().unwrap().to_owned();
        let token = body["access_token"].as_str().unwrap().to_owned();
        Device {
            pair: key_pair(&device_id),
            user: User { base: self.user.base.clone(), token, id: self.user.id.clone() },
            device_id,
        }
    }

    fn unsigned_device_keys(&self) -> Value {
        json!({
            "user_id": self.user.id, "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("ed25519:{}", self.device_id): public(&self.pair),
                format!("curve25519:{}", self.device_id): format!("curve-of-{}", self.device_id),
            },
        })
    }

    fn device_keys(&self) -> Value {
        signed(self.unsigned_device_keys(), &self.user.id, &self.pair)
    }

    fn one_time_key(&self, id: &str) -> (String, Value) {
        (format!("signed_curve25519:{id}"), signed(json!({"key": format!("otk-{id}")}), &self.user.id, &self.pair))
    }

    async fn upload(&self, body: Value) -> (reqwest::StatusCode, Value) {
        self.user.call(Method::POST, "/keys/upload", Some(body)).await
    }

    async fn upload_one_time_keys(&self, ids: &[&str], fallback: Option<&str>) -> Value {
        let keys: serde_json::Map<String, Value> = ids.iter().map(|id| self.one_time_key(id)).collect();
        let mut body = json!({ "one_time_keys": keys });
        if let Some(id) = fallback {
            let key = signed(json!({"key": format!("fallback-{id}"), "fallback": true}), &self.user.id, &self.pair);
            body["fallback_keys"] = json!({ format!("signed_curve25519:{id}"): key });
        }
        let (status, answer) = self.upload(body).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

async fn device_keys_of(asker: &User, user_id: &str) -> Value {
    let answer = asker.ok(Method::POST, "/keys/query", Some(json!({ "device_keys": { user_id: [] } }))).await;
    answer["device_keys"][user_id].clone()
}

/// Keys that are not the device's own, not signed by it, or of unknown
/// algorithms are refused with the right errcode, and nothing of the
/// refused upload is stored.
async fn bad_keys_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = Device::new(&base, "alice").await;
    let bob = Device::new(&base, "bob").await;

    // Unsigned, wrongly signed, tampered after signing.
    let (status, body) = alice.upload(json!({ "device_keys": alice.unsigned_device_keys() })).await;
    assert_error(&(status, body), 400, "M_INVALID_SIGNATURE");
    let forged = signed(alice.unsigned_device_keys(), &alice.user.id, &key_pair(&alice.device_id));
    assert_error(&alice.upload(json!({ "device_keys": forged })).await, 400, "M_INVALID_SIGNATURE");
    let mut tampered = alice.device_keys();
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    assert_error(&alice.upload(json!({ "device_keys": tampered })).await, 400, "M_INVALID_SIGNATURE");
    // Another user's or another device's keys.
    assert_error(&alice.upload(json!({ "device_keys": bob.device_keys() })).await, 400, "M_INVALID_PARAM");
    let mut other_device = alice.unsigned_device_keys();
    other_device["device_id"] = json!("SOMEONEELSE");
    let other_device = signed(other_device, &alice.user.id, &alice.pair);
    assert_error(&alice.upload(json!({ "device_keys": other_device })).await, 400, "M_INVALID_PARAM");
    // A good device key with a bad one-time key: all or nothing.
    let (otk_id, otk) = alice.one_time_key("AAAA");
    let mut bad_otk = otk.clone();
    bad_otk["key"] = json!("swapped");
    let upload = json!({ "device_keys": alice.device_keys(), "one_time_keys": { otk_id.clone(): bad_otk } });
    assert_error(&alice.upload(upload).await, 400, "M_INVALID_SIGNATURE");
    assert_eq!(device_keys_of(&bob.user, &alice.user.id).await, json!({}), "nothing of a refused upload is stored");
    let rot13 = json!({ "device_keys": alice.device_keys(), "one_time_keys": { "rot13:AAAA": "abc" } });
    assert_error(&alice.upload(rot13).await, 400, "M_INVALID_PARAM");
    assert_eq!(device_keys_of(&bob.user, &alice.user.id).await, json!({}));

    // The good upload, then a different identity for the same device.
    let answer = alice.upload(json!({ "device_keys": alice.device_keys(), "one_time_keys": { otk_id: otk } })).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["one_time_key_counts"]["signed_curve25519"], 1);
    // The same keys again change nothing, nor do they with one more
    // signature (matrix-js-sdk sends them again so when it sets up
    // cross-signing while its first upload is in flight).
    assert_eq!(alice.upload(json!({ "device_keys": alice.device_keys() })).await.0, 200);
    let mut countersigned = alice.device_keys();
    countersigned["signatures"][&alice.user.id]["ed25519:SELFSIGNING"] = json!("c2lnbmF0dXJl");
    let again = alice.upload(json!({ "device_keys": countersigned })).await;
    assert_eq!(again.0, 200, "{}", again.1);
    let impostor = Device { pair: key_pair(&alice.device_id), ..Device::new(&base, "spare").await };
    let mut replaced = impostor.unsigned_device_keys();
    replaced["user_id"] = json!(alice.user.id);
    replaced["device_id"] = json!(alice.device_id);
    replaced["keys"] = json!({
        format!("ed25519:{}", alice.device_id): public(&impostor.pair),
        format!("curve25519:{}", alice.device_id): "another-curve",
    });
    let replaced = signed(replaced, &alice.user.id, &impostor.pair);
    assert_error(&alice.upload(json!({ "device_keys": replaced })).await, 400, "M_INVALID_PARAM");
    let stored = device_keys_of(&bob.user, &alice.user.id).await;
    assert_eq!(stored[&alice.device_id]["keys"], alice.device_keys()["keys"], "the first identity stays");

    // Too many keys in one upload.
    let many: serde_json::Map<String, Value> = (0..1_001).map(|n| (format!("curve25519:K{n}"), json!(format!("k{n}")))).collect();
    assert_error(&alice.upload(json!({ "one_time_keys": many })).await, 400, "M_INVALID_PARAM");
    let counts = alice.upload(json!({})).await.1;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 1, "{counts}");

    // Signing keys whose signatures do not verify.
    let master = key_pair("m");
    let master_pk = public(&master);
    let ssk_pk = public(&key_pair("s"));
    let upload = json!({
        "master_key": { "user_id": alice.user.id, "usage": ["master"], "keys": { format!("ed25519:{master_pk}"): master_pk } },
        "self_signing_key": { "user_id": alice.user.id, "usage": ["self_signing"], "keys": { format!("ed25519:{ssk_pk}"): ssk_pk } },
    });
    let refused = alice.user.call(Method::POST, "/keys/device_signing/upload", Some(upload)).await;
    assert_error(&refused, 400, "M_INVALID_SIGNATURE");
    let query = alice.user.ok(Method::POST, "/keys/query", Some(json!({ "device_keys": { alice.user.id.as_str(): [] } }))).await;
    assert_eq!(query["master_keys"], json!({}), "{query}");
}

on_both_backends!(bad_keys_are_refused);

/// 50 claims at once on a device with 10 one-time keys: each key goes to
/// one claimer only, the other 40 get the fallback key.
async fn concurrent_claims(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let bob = Device::new(&base, "bob").await;
    let (status, body) = bob.upload(json!({ "device_keys": bob.device_keys() })).await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<String> = (0..10).map(|n| format!("K{n}")).collect();
    bob.upload_one_time_keys(&ids.iter().map(String::as_str).collect::<Vec<_>>(), Some("FB")).await;
    let claimers: Vec<User> = futures_util::future::join_all((0..5).map(|n| {
        let base = base.clone();
        async move { User::new(&base, &format!("claimer{n}")).await }
    }))
    .await;
    let claims = (0..50).map(|n| {
        let claimer = &claimers[n % claimers.len()];
        let body = json!({ "one_time_keys": { bob.user.id.as_str(): { bob.device_id.as_str(): "signed_curve25519" } } });
        async move { claimer.ok(Method::POST, "/keys/claim", Some(body)).await }
    });
    let answers = futures_util::future::join_all(claims).await;
    let mut got: Vec<String> = answers
        .iter()
        .map(|a| {
            let keys = a["one_time_keys"][&bob.user.id][&bob.device_id].as_object().unwrap_or_else(|| panic!("{a}"));
            assert_eq!(keys.len(), 1, "{a}");
            keys.keys().next().unwrap().clone()
        })
        .collect();
    got.sort();
    let fallback = got.iter().filter(|k| *k == "signed_curve25519:FB").count();
    let mut one_time: Vec<&String> = got.iter().filter(|k| *k != "signed_curve25519:FB").collect();
    one_time.dedup();
    assert_eq!(one_time.len(), 10, "every one-time key handed out once: {got:?}");
    assert_eq!(fallback, 40, "{got:?}");
    let sync = bob.user.sync("timeout=0").await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0, "{sync}");
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]), "the fallback key was used: {sync}");
}

on_both_backends!(concurrent_claims);

/// To-device messages: delivered in `/sync` to the device named (or every
/// device for `*`), once per transaction id, deleted once the next sync
/// acknowledges them; oversized or too many refused, nothing queued.
async fn to_device_delivery(backend: Backend) {
    let server = TestServer::start_with(backend, crate::common::with_metrics).await.unwrap();
    let base = server.base_url.clone();
    let alice = Device::new(&base, "alice").await;
    let bob1 = Device::new(&base, "bob").await;
    let bob2 = bob1.login("bob").await;
    let initial1 = bob1.user.sync("timeout=0").await;
    let initial2 = bob2.user.sync("timeout=0").await;
    let (since1, since2) = (initial1["next_batch"].as_str().unwrap(), initial2["next_batch"].as_str().unwrap());

    let message = |text: &str| json!({ "messages": { bob1.user.id.as_str(): { bob1.device_id.as_str(): { "text": text } } } });
    alice.user.ok(Method::PUT, "/sendToDevice/org.example.ping/t1", Some(message("one"))).await;
    // The same transaction again: answered the same, queued once.
    alice.user.ok(Method::PUT, "/sendToDevice/org.example.ping/t1", Some(message("one"))).await;
    let all = json!({ "messages": { bob1.user.id.as_str(): { "*": { "text": "everyone" } } } });
    alice.user.ok(Method::PUT, "/sendToDevice/org.example.ping/t2", Some(all)).await;

    // Refusals queue nothing.
    let big = json!({ "messages": { bob1.user.id.as_str(): { bob1.device_id.as_str(): { "pad": "x".repeat(70_000) } } } });
    assert_error(&alice.user.call(Method::PUT, "/sendToDevice/org.example.ping/t3", Some(big)).await, 413, "M_TOO_LARGE");
    let devices: serde_json::Map<String, Value> = (0..10_001).map(|n| (format!("D{n}"), json!({}))).collect();
    let many = json!({ "messages": { bob1.user.id.as_str(): devices } });
    assert_error(&alice.user.call(Method::PUT, "/sendToDevice/org.example.ping/t4", Some(many)).await, 400, "M_INVALID_PARAM");

    let texts = |sync: &Value| -> Vec<String> {
        sync["to_device"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["sender"], json!(alice.user.id));
                assert_eq!(e["type"], "org.example.ping");
                e["content"]["text"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let first = bob1.user.sync(&format!("since={since1}&timeout=0")).await;
    assert_eq!(texts(&first), ["one", "everyone"], "{first}");
    let other = bob2.user.sync(&format!("since={since2}&timeout=0")).await;
    assert_eq!(texts(&other), ["everyone"], "{other}");
    // The client lost the answer and syncs from the same token again: it
    // gets the messages again.
    let again = bob1.user.sync(&format!("since={since1}&timeout=0")).await;
    assert_eq!(texts(&again), ["one", "everyone"]);
    // Acknowledged by the next token: gone, even for an initial sync.
    let next = first["next_batch"].as_str().unwrap();
    assert_eq!(texts(&bob1.user.sync(&format!("since={next}&timeout=0")).await), Vec::<String>::new());
    assert_eq!(texts(&bob1.user.sync("timeout=0").await), Vec::<String>::new());
    // An initial sync of the other device still gets its unacknowledged one.
    assert_eq!(texts(&bob2.user.sync("timeout=0").await), ["everyone"]);

    // A waiting sync is woken by a message.
    let since = bob1.user.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let waiting = {
        let user = User { base: base.clone(), token: bob1.user.token.clone(), id: bob1.user.id.clone() };
        tokio::spawn(async move { user.sync(&format!("since={since}&timeout=20000")).await })
    };
    crate::common::wait_for_parked_polls(&server, 1).await;
    alice.user.ok(Method::PUT, "/sendToDevice/org.example.ping/t5", Some(message("wake"))).await;
    let woken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.expect("woken").unwrap();
    assert_eq!(texts(&woken), ["wake"]);
}

on_both_backends!(to_device_delivery);

/// Server-side key backups: `M_NOT_FOUND` before the first version, keys
/// only into the current version, the better session key kept.
async fn key_backup(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let bob = User::new(&base, "bob").await;
    assert_error(&bob.call(Method::GET, "/room_keys/version", None).await, 404, "M_NOT_FOUND");
    assert_error(&bob.call(Method::GET, "/room_keys/version/1", None).await, 404, "M_NOT_FOUND");
    let algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    let v1 = bob
        .ok(Method::POST, "/room_keys/version", Some(json!({ "algorithm": algorithm, "auth_data": { "public_key": "abc" } })))
        .await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let info = bob.ok(Method::GET, "/room_keys/version", None).await;
    assert_eq!((&info["version"], &info["count"], &info["auth_data"]), (&json!(v1), &json!(0), &json!({ "public_key": "abc" })));
    let etag0 = info["etag"].clone();

    let session = |index: u64, verified: bool, marker: &str| json!({ "first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": { "ciphertext": marker } });
    let path = |room: &str, session: &str, version: &str| format!("/room_keys/keys/{room}/{session}?version={version}");
    let room = "!r:localhost";
    let put = bob.ok(Method::PUT, &path(room, "S1", &v1), Some(session(5, false, "first"))).await;
    assert_eq!(put["count"], 1);
    assert_ne!(put["etag"], etag0);
    // A worse key (later index) is not kept; a better one is.
    let same = bob.ok(Method::PUT, &path(room, "S1", &v1), Some(session(9, false, "worse"))).await;
    assert_eq!(same["etag"], put["etag"], "nothing changed, the etag stays");
    bob.ok(Method::PUT, &path(room, "S1", &v1), Some(session(2, false, "better"))).await;
    bob.ok(Method::PUT, &path(room, "S1", &v1), Some(session(7, true, "verified"))).await;
    let got = bob.ok(Method::GET, &path(room, "S1", &v1), None).await;
    assert_eq!(got["session_data"]["ciphertext"], "verified", "{got}");
    let all = bob.ok(Method::GET, &format!("/room_keys/keys?version={v1}"), None).await;
    assert_eq!(all["rooms"][room]["sessions"]["S1"]["first_message_index"], 7, "{all}");
    assert_error(&bob.call(Method::GET, &path(room, "NOPE", &v1), None).await, 404, "M_NOT_FOUND");

    // A new version: keys for the old one are refused, naming the new.
    let v2 =
        bob.ok(Method::POST, "/room_keys/version", Some(json!({ "algorithm": algorithm, "auth_data": {} }))).await["version"]
            .as_str()
            .unwrap()
            .to_owned();
    let wrong = bob.call(Method::PUT, &path(room, "S2", &v1), Some(session(0, false, "late"))).await;
    assert_error(&wrong, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(wrong.1["current_version"], json!(v2));
    // Malformed session data is refused.
    let bad = bob.call(Method::PUT, &path(room, "S2", &v2), Some(json!({ "first_message_index": -1 }))).await;
    assert_error(&bad, 400, "M_BAD_JSON");
    bob.ok(Method::DELETE, &format!("/room_keys/version/{v2}"), None).await;
    assert_eq!(bob.ok(Method::GET, "/room_keys/version", None).await["version"], json!(v1));
    let deleted = bob.ok(Method::DELETE, &format!("/room_keys/keys/{room}?version={v1}"), None).await;
    assert_eq!(deleted["count"], 0);
}

on_both_backends!(key_backup);

/// `/keys/changes` and `device_lists` of `/sync` name users who share an
/// encrypted room and changed their keys, and users who left.
async fn device_list_changes(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = Device::new(&base, "alice").await;
    let bob = Device::new(&base, "bob").await;
    let stranger = Device::new(&base, "stranger").await;
    let room = alice.user.create_room(json!({ "preset": "private_chat", "invite": [bob.user.id] })).await;
    bob.user.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let since = alice.user.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    bob.upload(json!({ "device_keys": bob.device_keys() })).await;
    stranger.upload(json!({ "device_keys": stranger.device_keys() })).await;
    let sync = alice.user.sync(&format!("since={since}&timeout=0")).await;
    assert_eq!(sync["device_lists"]["changed"], json!([bob.user.id]), "{sync}");
    let to = sync["next_batch"].as_str().unwrap();
    let changes = alice.user.ok(Method::GET, &format!("/keys/changes?from={since}&to={to}"), None).await;
    assert_eq!(changes["changed"], json!([bob.user.id]), "{changes}");

    bob.user.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    let after_leave = alice.user.sync(&format!("since={to}&timeout=0")).await;
    assert_eq!(after_leave["device_lists"]["left"], json!([bob.user.id]), "{after_leave}");
    let bad = alice.user.call(Method::GET, "/keys/changes?from=nonsense&to=s1", None).await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
}

on_both_backends!(device_list_changes);

async fn encryption_of(user: &User, room: String) -> (reqwest::StatusCode, Value) {
    user.call(Method::GET, &format!("/rooms/{room}/state/m.room.encryption/"), None).await
}

/// Private rooms are encrypted from their creation (Megolm), public ones
/// not; `encryption_by_default` changes that, and `initial_state` wins.
async fn private_rooms_are_encrypted_by_default(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    for preset in ["private_chat", "trusted_private_chat"] {
        let room = alice.create_room(json!({ "preset": preset })).await;
        let (status, content) = encryption_of(&alice, room).await;
        assert_eq!((status.as_u16(), &content), (200, &json!({"algorithm": "m.megolm.v1.aes-sha2"})), "{preset}");
    }
    let public = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(encryption_of(&alice, public).await.0, 404);
    let rotated = json!({"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 10});
    let own = alice
        .create_room(json!({ "preset": "private_chat", "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": rotated}] }))
        .await;
    assert_eq!(encryption_of(&alice, own).await.1, rotated, "the client's initial_state wins");

    let off = TestServer::start_with(backend, |config| {
        config.encryption_by_default = chancery_server::config::EncryptionByDefault::Off;
    })
    .await
    .unwrap();
    let bob = User::new(&off.base_url, "bob").await;
    let room = bob.create_room(json!({ "preset": "private_chat" })).await;
    assert_eq!(encryption_of(&bob, room).await.0, 404, "off: clients decide");
    let all = TestServer::start_with(backend, |config| {
        config.encryption_by_default = chancery_server::config::EncryptionByDefault::All;
    })
    .await
    .unwrap();
    let carol = User::new(&all.base_url, "carol").await;
    let room = carol.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(encryption_of(&carol, room).await.0, 200, "all: public rooms too");
}

on_both_backends!(private_rooms_are_encrypted_by_default);
