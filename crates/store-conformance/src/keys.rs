//! Conformance cases for end-to-end encryption (`KeyStore`): key uploads
//! and claims, cross-signing keys and signatures, the device-list stream
//! and whom a sync tells about it, the device-deletion hooks of
//! `AccountStore`, to-device inboxes, key backups and dehydrated devices.
//!
//! Keys here are opaque strings to the store; they are written as
//! canonical JSON (sorted keys, no spaces), as the service hands them
//! over, so a backend storing them byte for byte gives them back equal.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use chancery_store::*;

use super::{account, device, member, room_with, state};

/// The one-time key algorithm clients use.
const SC: &str = "signed_curve25519";
/// Another algorithm, to see that counts and fallback keys are per
/// algorithm.
const OTHER: &str = "org.example.other";

const KEYS: KeyLimits = KeyLimits { max_one_time_keys: 100 };
const MAX_DEVICES: usize = 10;

/// An account and its devices, each with tokens of its own.
async fn user_with(store: &DynStore, user: &str, devices: &[&str]) {
    store.create_account(account(user), None, None, 1_000).await.unwrap();
    for id in devices {
        store.upsert_device(device_of(user, id), MAX_DEVICES).await.unwrap();
    }
}

/// [`device`] with an access token named after the user and device, so
/// no two devices of a case share one.
fn device_of(user: &str, id: &str) -> NewDevice {
    let mut d = device(user, id, 0);
    d.tokens.access_token_hash = format!("access-{user}-{id}");
    d
}

/// Signed device keys as canonical JSON; `n` makes other content.
fn device_keys_json(user: &str, device: &str, n: u32) -> String {
    format!(
        r#"{{"algorithms":["m.olm.v1.curve25519-aes-sha2"],"device_id":"{device}","keys":{{"ed25519:{device}":"ed{n}"}},"user_id":"{user}"}}"#
    )
}

fn one_time(algorithm: &str, id: &str, key: &str) -> OneTimeKey {
    OneTimeKey { key_id: format!("{algorithm}:{id}"), algorithm: algorithm.into(), key: json!(key).to_string() }
}

fn device_keys_only(user: &str, device: &str, n: u32) -> KeyUpload {
    KeyUpload { device_keys: Some(device_keys_json(user, device, n)), ..KeyUpload::default() }
}

fn one_time_only(keys: Vec<OneTimeKey>) -> KeyUpload {
    KeyUpload { one_time_keys: keys, ..KeyUpload::default() }
}

fn fallback_only(keys: Vec<OneTimeKey>) -> KeyUpload {
    KeyUpload { fallback_keys: keys, ..KeyUpload::default() }
}

/// Counts without algorithms counted zero: whether a backend lists an
/// algorithm it has no keys of left is not part of the contract.
fn nonzero(counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts.into_iter().filter(|(_, n)| *n > 0).collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(a, n)| ((*a).to_owned(), *n)).collect()
}

async fn key_counts(store: &DynStore, user: &str, device: &str) -> (BTreeMap<String, u64>, Vec<String>) {
    let (counted, fallbacks) = store.key_counts(user, device).await.unwrap();
    (nonzero(counted), fallbacks)
}

fn claim(user: &str, device: &str, algorithm: &str) -> KeyClaim {
    KeyClaim { user_id: user.into(), device_id: device.into(), algorithm: algorithm.into() }
}

/// One claim, and the key id it got (`None`: nothing).
async fn claim_one(store: &DynStore, user: &str, device: &str, algorithm: &str) -> Option<ClaimedKey> {
    let mut got = store.claim_keys(&[claim(user, device, algorithm)]).await.unwrap();
    assert!(got.len() <= 1, "one claim gets at most one key: {got:?}");
    got.pop()
}

async fn device_list_pos(store: &DynStore) -> u64 {
    store.stream_positions().await.unwrap().device_lists
}

async fn to_device_pos(store: &DynStore) -> u64 {
    store.stream_positions().await.unwrap().to_device
}

fn updates(changed: &[&str], left: &[&str]) -> DeviceListUpdates {
    DeviceListUpdates {
        changed: changed.iter().map(|u| (*u).to_owned()).collect(),
        left: left.iter().map(|u| (*u).to_owned()).collect(),
    }
}

/// Appends `event` on the room's forward extremities, one deeper than the
/// room's deepest event, and returns its position.
async fn append(store: &DynStore, mut event: NewEvent) -> u64 {
    let info = store.room(&event.room_id).await.unwrap().expect("the room exists");
    event.depth = info.max_depth + 1;
    store.append_event(event, &info.forward_extremities).await.unwrap()
}

fn megolm() -> serde_json::Value {
    json!({"algorithm": "m.megolm.v1.aes-sha2"})
}

/// An encrypted room of these joined members.
async fn encrypted_room(store: &DynStore, r: &str, members: &[&str]) {
    let joins: Vec<(String, &str)> = members.iter().map(|u| (format!("$join{u}{r}"), *u)).collect();
    let joins: Vec<(&str, &str, &str)> = joins.iter().map(|(id, u)| (id.as_str(), *u, "join")).collect();
    room_with(
        store,
        r,
        &[(&format!("$create{r}"), "m.room.create", json!({})), (&format!("$encryption{r}"), "m.room.encryption", megolm())],
        &joins,
    )
    .await;
}

fn entry(user: &str, device: &str, keys: String, display_name: Option<&str>) -> DeviceKeysEntry {
    DeviceKeysEntry { user_id: user.into(), device_id: device.into(), keys, display_name: display_name.map(Into::into) }
}

pub async fn key_uploads_are_all_or_nothing_and_counted(store: DynStore) {
    let (a, b) = ("@a:x", "@b:x");
    user_with(&store, a, &["DEV", "DEV2", "DEV3"]).await;
    user_with(&store, b, &["DEVB"]).await;
    store.set_device_display_name(a, "DEV", Some("Phone")).await.unwrap();
    assert_eq!(key_counts(&store, a, "DEV").await, (counts(&[]), vec![]), "a new device holds no keys");

    let before = device_list_pos(&store).await;
    let first = KeyUpload {
        device_keys: Some(device_keys_json(a, "DEV", 1)),
        one_time_keys: vec![one_time(SC, "AAAA", "k1"), one_time(SC, "AAAB", "k2")],
        fallback_keys: vec![one_time(SC, "F1", "f1")],
    };
    let got = store.upload_keys(a, "DEV", first.clone(), KEYS).await.unwrap();
    assert_eq!(nonzero(got), counts(&[(SC, 2)]), "the upload answers the unclaimed one-time keys");
    let moved = device_list_pos(&store).await;
    assert!(moved > before, "new device keys move the user in the device-list stream ({before} -> {moved})");
    assert_eq!(key_counts(&store, a, "DEV").await, (counts(&[(SC, 2)]), vec![SC.to_owned()]));

    // The same upload again changes nothing.
    let again = store.upload_keys(a, "DEV", first.clone(), KEYS).await.unwrap();
    assert_eq!(nonzero(again), counts(&[(SC, 2)]), "the same one-time keys again are not new ones");
    assert_eq!(device_list_pos(&store).await, moved, "the same device keys again are no change of the device list");

    // Other device keys: refused, and nothing else of that upload stored.
    let changed = KeyUpload {
        device_keys: Some(device_keys_json(a, "DEV", 2)),
        one_time_keys: vec![one_time(SC, "AAAC", "k3")],
        fallback_keys: vec![one_time(OTHER, "G9", "g9")],
    };
    let refused = store.upload_keys(a, "DEV", changed, KEYS).await;
    assert!(matches!(refused, Err(StoreError::DeviceKeysChanged)), "{refused:?}");
    assert_eq!(
        key_counts(&store, a, "DEV").await,
        (counts(&[(SC, 2)]), vec![SC.to_owned()]),
        "neither the one-time nor the fallback key of a refused upload is stored"
    );
    let stored = store.device_keys(&[(a.to_owned(), vec!["DEV".to_owned()])]).await.unwrap();
    assert_eq!(stored, [entry(a, "DEV", device_keys_json(a, "DEV", 1), Some("Phone"))], "the first device keys stay");
    assert_eq!(device_list_pos(&store).await, moved, "a refused upload does not move the device list");

    // A one-time key id held with another key: refused whole.
    let clash = KeyUpload {
        device_keys: None,
        one_time_keys: vec![one_time(SC, "AAAD", "k4"), one_time(SC, "AAAA", "not-k1")],
        fallback_keys: vec![one_time(OTHER, "G9", "g9")],
    };
    let refused = store.upload_keys(a, "DEV", clash, KEYS).await;
    assert!(matches!(refused, Err(StoreError::OneTimeKeyChanged)), "{refused:?}");
    assert_eq!(
        key_counts(&store, a, "DEV").await,
        (counts(&[(SC, 2)]), vec![SC.to_owned()]),
        "no key of an upload refused for a changed one-time key is stored"
    );
    // ... its device keys neither.
    store.upload_keys(a, "DEV2", one_time_only(vec![one_time(SC, "X", "x1")]), KEYS).await.unwrap();
    let clash = KeyUpload {
        device_keys: Some(device_keys_json(a, "DEV2", 1)),
        one_time_keys: vec![one_time(SC, "X", "x2")],
        fallback_keys: vec![],
    };
    let refused = store.upload_keys(a, "DEV2", clash, KEYS).await;
    assert!(matches!(refused, Err(StoreError::OneTimeKeyChanged)), "{refused:?}");
    assert!(
        store.device_keys(&[(a.to_owned(), vec!["DEV2".to_owned()])]).await.unwrap().is_empty(),
        "device keys of an upload refused for a changed one-time key are not stored"
    );
    assert_eq!(device_list_pos(&store).await, moved, "nor is the device list moved");

    // Counted by algorithm.
    let got = store.upload_keys(a, "DEV", one_time_only(vec![one_time(OTHER, "BBBA", "k5")]), KEYS).await.unwrap();
    assert_eq!(nonzero(got), counts(&[(OTHER, 1), (SC, 2)]), "one-time keys are counted per algorithm");
    assert_eq!(device_list_pos(&store).await, moved, "one-time keys are no change of the device list");

    // At most five unclaimed keys (all algorithms), three held.
    let five = KeyLimits { max_one_time_keys: 5 };
    let three_more = one_time_only(vec![one_time(SC, "AAAE", "k6"), one_time(SC, "AAAF", "k7"), one_time(SC, "AAAG", "k8")]);
    let over = store.upload_keys(a, "DEV", three_more, five).await;
    assert!(matches!(over, Err(StoreError::TooManyOneTimeKeys)), "{over:?}");
    assert_eq!(key_counts(&store, a, "DEV").await.0, counts(&[(OTHER, 1), (SC, 2)]), "none of a refused upload is kept");
    let two_more = one_time_only(vec![one_time(SC, "AAAE", "k6"), one_time(SC, "AAAF", "k7")]);
    let got = store.upload_keys(a, "DEV", two_more, five).await.unwrap();
    assert_eq!(nonzero(got), counts(&[(OTHER, 1), (SC, 4)]), "exactly the limit is allowed");
    let got = store.upload_keys(a, "DEV", one_time_only(vec![one_time(SC, "AAAA", "k1")]), five).await.unwrap();
    assert_eq!(nonzero(got), counts(&[(OTHER, 1), (SC, 4)]), "a key held already is not one more at the limit");
    let over = store.upload_keys(a, "DEV", one_time_only(vec![one_time(SC, "AAAH", "k9")]), five).await;
    assert!(matches!(over, Err(StoreError::TooManyOneTimeKeys)), "{over:?}");

    // Fallback keys: one per algorithm, listed while unused.
    store.upload_keys(a, "DEV", fallback_only(vec![one_time(OTHER, "G1", "g1")]), KEYS).await.unwrap();
    assert_eq!(key_counts(&store, a, "DEV").await.1, [OTHER, SC], "unused fallback algorithms, sorted");
    // OTHER has a one-time key: the first claim gets it, the second the fallback key.
    assert_eq!(claim_one(&store, a, "DEV", OTHER).await.map(|k| k.key_id), Some(format!("{OTHER}:BBBA")));
    assert_eq!(key_counts(&store, a, "DEV").await.1, [OTHER, SC], "the fallback key is unused while one-time keys last");
    let fallback = claim_one(&store, a, "DEV", OTHER).await.expect("the fallback key");
    assert_eq!((fallback.key_id.as_str(), fallback.key.as_str()), (&*format!("{OTHER}:G1"), &*json!("g1").to_string()));
    assert_eq!(key_counts(&store, a, "DEV").await.1, [SC], "a claimed fallback key is used");
    store.upload_keys(a, "DEV", fallback_only(vec![one_time(OTHER, "G1", "g1")]), KEYS).await.unwrap();
    assert_eq!(key_counts(&store, a, "DEV").await.1, [SC], "the same fallback key again keeps its used mark");
    store.upload_keys(a, "DEV", fallback_only(vec![one_time(OTHER, "G2", "g2")]), KEYS).await.unwrap();
    assert_eq!(key_counts(&store, a, "DEV").await.1, [OTHER, SC], "a new fallback key replaces the used one, unused");
    assert_eq!(claim_one(&store, a, "DEV", OTHER).await.map(|k| k.key_id), Some(format!("{OTHER}:G2")));

    // Devices that do not exist.
    for (user, device) in [(a, "NOPE"), ("@ghost:x", "DEV")] {
        let unknown = store.upload_keys(user, device, first.clone(), KEYS).await;
        assert!(matches!(unknown, Err(StoreError::UnknownDevice)), "{user} {device}: {unknown:?}");
        assert!(store.device(user, device).await.unwrap().is_none(), "no device is made up");
    }

    // `/keys/query`: all of a user's devices with keys, or the ones named.
    store.upload_keys(a, "DEV2", device_keys_only(a, "DEV2", 1), KEYS).await.unwrap();
    store.upload_keys(b, "DEVB", device_keys_only(b, "DEVB", 1), KEYS).await.unwrap();
    store.set_device_display_name(a, "DEV", Some("Old phone")).await.unwrap();
    let all_of_a = store.device_keys(&[(a.to_owned(), vec![])]).await.unwrap();
    assert_eq!(
        all_of_a,
        [
            entry(a, "DEV", device_keys_json(a, "DEV", 1), Some("Old phone")),
            entry(a, "DEV2", device_keys_json(a, "DEV2", 1), None),
        ],
        "all devices with keys (DEV3 has none), with their current names"
    );
    let named = store
        .device_keys(&[(b.to_owned(), vec![]), (a.to_owned(), vec!["DEV2".into(), "DEV3".into(), "NOPE".into()])])
        .await
        .unwrap();
    assert_eq!(
        named,
        [entry(a, "DEV2", device_keys_json(a, "DEV2", 1), None), entry(b, "DEVB", device_keys_json(b, "DEVB", 1), None)],
        "the devices named that have keys, sorted by user then device"
    );
    assert!(store.device_keys(&[("@ghost:x".into(), vec![])]).await.unwrap().is_empty());
    assert!(store.device_keys(&[]).await.unwrap().is_empty());
}

pub async fn claims_hand_out_one_time_keys_once_then_the_fallback(store: DynStore) {
    let (a, b) = ("@a:x", "@b:x");
    user_with(&store, a, &["DEV"]).await;
    user_with(&store, b, &["DEVB"]).await;
    let upload = KeyUpload {
        device_keys: Some(device_keys_json(a, "DEV", 1)),
        one_time_keys: vec![one_time(SC, "AAAA", "k1"), one_time(SC, "AAAB", "k2")],
        fallback_keys: vec![one_time(SC, "F1", "f1")],
    };
    store.upload_keys(a, "DEV", upload, KEYS).await.unwrap();
    // A second fallback key of the algorithm replaces the first.
    store.upload_keys(a, "DEV", fallback_only(vec![one_time(SC, "F2", "f2")]), KEYS).await.unwrap();

    let mut handed_out = BTreeSet::new();
    for _ in 0..2 {
        let got = claim_one(&store, a, "DEV", SC).await.expect("a one-time key");
        assert_eq!((got.user_id.as_str(), got.device_id.as_str()), (a, "DEV"));
        let expected = match got.key_id.as_str() {
            "signed_curve25519:AAAA" => "k1",
            "signed_curve25519:AAAB" => "k2",
            other => panic!("a one-time key was expected, got {other}"),
        };
        assert_eq!(got.key, json!(expected).to_string(), "the key as uploaded");
        assert!(handed_out.insert(got.key_id.clone()), "{} handed out twice", got.key_id);
    }
    assert_eq!(key_counts(&store, a, "DEV").await, (counts(&[]), vec![SC.to_owned()]), "both one-time keys are gone");
    for round in 0..2 {
        let got = claim_one(&store, a, "DEV", SC).await.expect("the fallback key");
        assert_eq!(
            (got.key_id.as_str(), got.key.as_str()),
            ("signed_curve25519:F2", &*json!("f2").to_string()),
            "claim {round} after the one-time keys: the newest fallback key"
        );
        assert!(key_counts(&store, a, "DEV").await.1.is_empty(), "a claimed fallback key is no longer unused");
    }
    assert_eq!(claim_one(&store, a, "DEV", OTHER).await, None, "nothing of an algorithm the device has no key of");
    assert_eq!(claim_one(&store, a, "NOPE", SC).await, None, "nothing of a device that does not exist");
    assert_eq!(claim_one(&store, "@ghost:x", "DEV", SC).await, None, "nothing of a user that does not exist");
    assert_eq!(claim_one(&store, b, "DEVB", SC).await, None, "nothing of a device that uploaded nothing");

    // Several claims in one call, one key each.
    store.upload_keys(b, "DEVB", one_time_only(vec![one_time(SC, "B1", "b1"), one_time(SC, "B2", "b2")]), KEYS).await.unwrap();
    let got = store.claim_keys(&[claim(b, "DEVB", SC), claim(a, "DEV", SC), claim(b, "DEVB", SC)]).await.unwrap();
    let got: BTreeSet<(String, String, String)> = got.into_iter().map(|k| (k.user_id, k.device_id, k.key_id)).collect();
    let expected: BTreeSet<(String, String, String)> =
        [(a, "DEV", "signed_curve25519:F2"), (b, "DEVB", "signed_curve25519:B1"), (b, "DEVB", "signed_curve25519:B2")]
            .into_iter()
            .map(|(u, d, k)| (u.to_owned(), d.to_owned(), k.to_owned()))
            .collect();
    assert_eq!(got, expected, "two claims of one device in a call get two keys");

    // One-time keys go first again once there are some.
    store.upload_keys(a, "DEV", one_time_only(vec![one_time(SC, "AAAC", "k3")]), KEYS).await.unwrap();
    assert_eq!(claim_one(&store, a, "DEV", SC).await.map(|k| k.key_id).as_deref(), Some("signed_curve25519:AAAC"));
    assert_eq!(claim_one(&store, a, "DEV", SC).await.map(|k| k.key_id).as_deref(), Some("signed_curve25519:F2"));
    // A new fallback key is unused until claimed.
    store.upload_keys(a, "DEV", fallback_only(vec![one_time(SC, "F3", "f3")]), KEYS).await.unwrap();
    assert_eq!(key_counts(&store, a, "DEV").await.1, [SC]);
}

/// Claims racing for a device's keys: each one-time key goes to exactly
/// one of them, the others get the fallback key.
pub async fn concurrent_claims_never_hand_out_a_key_twice(store: DynStore) {
    const CLAIMS: usize = 50;
    const ONE_TIME: usize = 10;
    let a = "@a:x";
    user_with(&store, a, &["DEV"]).await;
    let upload = KeyUpload {
        device_keys: Some(device_keys_json(a, "DEV", 1)),
        one_time_keys: (0..ONE_TIME).map(|n| one_time(SC, &format!("K{n:02}"), &format!("k{n}"))).collect(),
        fallback_keys: vec![one_time(SC, "FALLBACK", "f")],
    };
    store.upload_keys(a, "DEV", upload, KEYS).await.unwrap();
    let claims: Vec<_> = (0..CLAIMS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim_keys(&[claim(a, "DEV", SC)]).await })
        })
        .collect();
    let (mut one_time_ids, mut fallbacks) = (Vec::new(), 0);
    for task in claims {
        let got = task.await.unwrap().expect("a claim succeeds under concurrency");
        assert_eq!(got.len(), 1, "every claim gets a key: {got:?}");
        if got[0].key_id == "signed_curve25519:FALLBACK" {
            fallbacks += 1;
        } else {
            one_time_ids.push(got[0].key_id.clone());
        }
    }
    let distinct: BTreeSet<&String> = one_time_ids.iter().collect();
    assert_eq!(distinct.len(), one_time_ids.len(), "a one-time key was handed out twice: {one_time_ids:?}");
    assert_eq!(one_time_ids.len(), ONE_TIME, "every one-time key is handed out");
    assert_eq!(fallbacks, CLAIMS - ONE_TIME, "every other claim gets the fallback key");
    assert_eq!(key_counts(&store, a, "DEV").await, (counts(&[]), vec![]));
}

fn cross_signing(user: &str, kind: CrossSigningKeyKind, public: &str) -> CrossSigningKey {
    CrossSigningKey {
        user_id: user.into(),
        kind,
        public_key: public.into(),
        key: format!(r#"{{"keys":{{"ed25519:{public}":"{public}"}},"usage":["{}"],"user_id":"{user}"}}"#, kind.as_str()),
    }
}

fn signature(target_user: &str, target_key: &str, signer_user: &str, signer_key: &str, value: &str) -> KeySignature {
    KeySignature {
        target_user_id: target_user.into(),
        target_key_id: target_key.into(),
        signer_user_id: signer_user.into(),
        signer_key_id: signer_key.into(),
        signature: value.into(),
    }
}

async fn cross_signing_of(store: &DynStore, user: &str) -> Vec<CrossSigningKey> {
    let mut keys = store.cross_signing_keys(&[user.to_owned()]).await.unwrap();
    keys.sort_by_key(|k| (k.user_id.clone(), k.kind));
    keys
}

/// Signatures on keys of `users`, as (target user, target key, signer,
/// signer key, signature), sorted.
async fn signatures_on(store: &DynStore, users: &[&str]) -> Vec<[String; 5]> {
    let users: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
    let mut got: Vec<[String; 5]> = store
        .key_signatures(&users)
        .await
        .unwrap()
        .into_iter()
        .map(|s| [s.target_user_id, s.target_key_id, s.signer_user_id, s.signer_key_id, s.signature])
        .collect();
    got.sort();
    got
}

fn rows(signatures: &[&KeySignature]) -> Vec<[String; 5]> {
    let mut rows: Vec<[String; 5]> = signatures
        .iter()
        .map(|s| {
            [
                s.target_user_id.clone(),
                s.target_key_id.clone(),
                s.signer_user_id.clone(),
                s.signer_key_id.clone(),
                s.signature.clone(),
            ]
        })
        .collect();
    rows.sort();
    rows
}

pub async fn cross_signing_keys_and_signatures_replace_and_cascade(store: DynStore) {
    use CrossSigningKeyKind::{Master, SelfSigning, UserSigning};
    let (a, b) = ("@a:x", "@b:x");
    user_with(&store, a, &["DEV"]).await;
    user_with(&store, b, &["DEVB"]).await;
    assert!(store.cross_signing_keys(&[a.to_owned()]).await.unwrap().is_empty());

    let before = device_list_pos(&store).await;
    let (m1, s1, u1) = (cross_signing(a, Master, "M1"), cross_signing(a, SelfSigning, "S1"), cross_signing(a, UserSigning, "U1"));
    store.set_cross_signing_keys(a, &[m1.clone(), s1.clone(), u1.clone()]).await.unwrap();
    let after = device_list_pos(&store).await;
    assert!(after > before, "cross-signing keys move the user in the device-list stream");
    assert_eq!(store.device_list_updates(a, (before, after), None).await.unwrap(), updates(&[a], &[]));
    assert_eq!(cross_signing_of(&store, a).await, [m1.clone(), s1.clone(), u1.clone()]);
    let b_keys = [cross_signing(b, Master, "BM"), cross_signing(b, SelfSigning, "BS"), cross_signing(b, UserSigning, "BU")];
    store.set_cross_signing_keys(b, &b_keys).await.unwrap();
    assert_eq!(store.cross_signing_keys(&[a.to_owned(), b.to_owned()]).await.unwrap().len(), 6);
    assert!(store.cross_signing_keys(&["@ghost:x".to_owned()]).await.unwrap().is_empty());

    // One key replaced, the others kept.
    let s2 = cross_signing(a, SelfSigning, "S2");
    store.set_cross_signing_keys(a, std::slice::from_ref(&s2)).await.unwrap();
    assert_eq!(cross_signing_of(&store, a).await, [m1.clone(), s2.clone(), u1.clone()], "only the self-signing key changed");

    // Signatures: a's device and b's user-signing key on a's master key,
    // a's self-signing key on a's device, a's master key on its
    // self-signing key, a's user-signing key on b's master key.
    let device_on_master = signature(a, "M1", a, "ed25519:DEV", "sig-dev-m1");
    let b_on_master = signature(a, "M1", b, "ed25519:BU", "sig-bu-m1");
    let self_on_device = signature(a, "DEV", a, "ed25519:S2", "sig-s2-dev");
    let master_on_self = signature(a, "S2", a, "ed25519:M1", "sig-m1-s2");
    let a_on_b = signature(b, "BM", a, "ed25519:U1", "sig-u1-bm");
    let b_own = signature(b, "BM", b, "ed25519:DEVB", "sig-devb-bm");
    let before = device_list_pos(&store).await;
    let all = [&device_on_master, &b_on_master, &self_on_device, &master_on_self, &a_on_b, &b_own];
    store.add_key_signatures(&all.map(Clone::clone)).await.unwrap();
    let after = device_list_pos(&store).await;
    assert!(after > before, "signatures move their targets in the device-list stream");
    for user in [a, b] {
        let seen = store.device_list_updates(user, (before, after), None).await.unwrap();
        assert_eq!(seen, updates(&[user], &[]), "{user}, a target, moved");
    }
    assert_eq!(
        signatures_on(&store, &[a]).await,
        rows(&[&device_on_master, &b_on_master, &self_on_device, &master_on_self]),
        "signatures on a's keys, whoever made them"
    );
    assert_eq!(signatures_on(&store, &[b]).await, rows(&[&a_on_b, &b_own]));
    assert_eq!(signatures_on(&store, &[a, b]).await, rows(&all));

    // Same target, signer and signing key: replaced; another signing key
    // is another signature.
    let device_on_master_again = signature(a, "M1", a, "ed25519:DEV", "sig-dev-m1-again");
    let dev2_on_master = signature(a, "M1", a, "ed25519:DEV2", "sig-dev2-m1");
    store.add_key_signatures(&[device_on_master_again.clone(), dev2_on_master.clone()]).await.unwrap();
    assert_eq!(
        signatures_on(&store, &[a]).await,
        rows(&[&device_on_master_again, &dev2_on_master, &b_on_master, &self_on_device, &master_on_self]),
        "a signature of the same target, signer and signing key replaces the old one"
    );

    // Replacing the self-signing key drops what it signed and what was
    // signed on it.
    store.set_cross_signing_keys(a, &[cross_signing(a, SelfSigning, "S3")]).await.unwrap();
    assert_eq!(
        signatures_on(&store, &[a]).await,
        rows(&[&device_on_master_again, &dev2_on_master, &b_on_master]),
        "signatures by and on the replaced self-signing key are gone"
    );
    // Replacing the user-signing key drops its signature on b's key.
    let before = device_list_pos(&store).await;
    store.set_cross_signing_keys(a, &[cross_signing(a, UserSigning, "U2")]).await.unwrap();
    assert!(device_list_pos(&store).await > before, "a replaced key moves the user again");
    assert_eq!(signatures_on(&store, &[b]).await, rows(&[&b_own]), "the signature by the replaced user-signing key is gone");
    // Replacing the master key drops every signature on it.
    store.set_cross_signing_keys(a, &[cross_signing(a, Master, "M2")]).await.unwrap();
    assert!(signatures_on(&store, &[a]).await.is_empty(), "signatures on the replaced master key are gone");
    assert_eq!(
        cross_signing_of(&store, a).await,
        [cross_signing(a, Master, "M2"), cross_signing(a, SelfSigning, "S3"), cross_signing(a, UserSigning, "U2")]
    );
    assert_eq!(cross_signing_of(&store, b).await, b_keys, "b's keys are b's");
}

/// Whom a sync is told about (`KeyStore::device_list_updates`): key
/// changes of users sharing an encrypted room now (and of the user
/// themselves); with an events range, members who joined one of the
/// user's encrypted rooms, every member of one the user joined or that
/// became encrypted (`changed`), and members who left, were banned from
/// or were left behind in such a room and share none any more (`left`).
/// A join after a join (a display-name change) is no join. The answer
/// reads the rooms as they are now, so each step is asked about at once.
pub async fn device_list_updates_follow_shared_encrypted_rooms(store: DynStore) {
    let (a, b, c, d, e) = ("@a:x", "@b:x", "@c:x", "@d:x", "@e:x");
    for user in [a, b, c, d, e] {
        user_with(&store, user, &["DEV"]).await;
    }
    let (enc, plain, chat) = ("!enc:x", "!plain:x", "!chat:x");
    encrypted_room(&store, enc, &[a, b]).await;
    room_with(&store, plain, &[("$createplain", "m.room.create", json!({}))], &[("$aplain", a, "join"), ("$cplain", c, "join")])
        .await;
    room_with(&store, chat, &[("$createchat", "m.room.create", json!({}))], &[("$achat", a, "join"), ("$echat", e, "join")])
        .await;

    // Device keys of a, b and c, one after the other.
    let start = device_list_pos(&store).await;
    let mut at = Vec::new();
    for user in [a, b, c] {
        store.upload_keys(user, "DEV", device_keys_only(user, "DEV", 1), KEYS).await.unwrap();
        let pos = device_list_pos(&store).await;
        assert!(pos > at.last().copied().unwrap_or(start), "device-list positions grow ({user} at {pos})");
        at.push(pos);
    }
    let (pa, pb, pc) = (at[0], at[1], at[2]);
    let seen = |me: &'static str, lists: (u64, u64), events: Option<(u64, u64)>| {
        let store = Arc::clone(&store);
        async move { store.device_list_updates(me, lists, events).await.unwrap() }
    };
    assert_eq!(seen(a, (start, pc), None).await, updates(&[a, b], &[]), "a: itself and b of the encrypted room, not c");
    assert_eq!(seen(b, (start, pc), None).await, updates(&[a, b], &[]));
    assert_eq!(seen(c, (start, pc), None).await, updates(&[c], &[]), "c shares no encrypted room: itself only");
    assert_eq!(seen(a, (start, pa), None).await, updates(&[a], &[]));
    assert_eq!(seen(a, (pa, pc), None).await, updates(&[b], &[]), "the range's lower end is excluded");
    assert_eq!(seen(a, (pb, pc), None).await, updates(&[], &[]), "c's change is not a's business");
    assert_eq!(seen(e, (start, pc), None).await, updates(&[], &[]));

    // From here on no key changes: only the events' range tells.
    let at_events = |me: &'static str, from: u64, to: u64| seen(me, (pc, pc), Some((from, to)));

    // d joins the encrypted room.
    let e0 = store.current_stream_pos().await.unwrap();
    let e1 = append(&store, member(enc, "$djoin", d, "join", 0)).await;
    assert_eq!(at_events(a, e0, e1).await, updates(&[d], &[]), "a member who joined a's encrypted room");
    assert_eq!(at_events(b, e0, e1).await, updates(&[d], &[]));
    assert_eq!(at_events(d, e0, e1).await, updates(&[a, b], &[]), "d joined: every member is new to d");
    assert_eq!(at_events(c, e0, e1).await, updates(&[], &[]), "c is not in the room");
    assert_eq!(seen(a, (pc, pc), None).await, updates(&[], &[]), "without an events range, no membership is looked at");
    assert_eq!(at_events(a, e1, e1).await, updates(&[], &[]));

    // d changes their display name: a join after a join is no join.
    let e2 = append(&store, member(enc, "$drename", d, "join", 0)).await;
    assert_eq!(at_events(a, e1, e2).await, updates(&[], &[]), "a display-name change is not a join");
    assert_eq!(at_events(d, e1, e2).await, updates(&[], &[]), "nor for the member who made it");

    // e joins the unencrypted room, and leaves the other unencrypted one.
    let e3 = append(&store, member(plain, "$ejoinplain", e, "join", 0)).await;
    assert_eq!(at_events(a, e2, e3).await, updates(&[], &[]), "a join of an unencrypted room is no news");
    let e4 = append(&store, member(chat, "$eleavechat", e, "leave", 0)).await;
    assert_eq!(at_events(a, e3, e4).await, updates(&[], &[]), "nor is leaving an unencrypted room");

    // The unencrypted room with a, c and e becomes encrypted.
    let e5 = append(&store, state(plain, "$plainencryption", "m.room.encryption", megolm(), 0)).await;
    assert_eq!(at_events(a, e4, e5).await, updates(&[c, e], &[]), "every member of a room that became encrypted");
    assert_eq!(at_events(c, e4, e5).await, updates(&[a, e], &[]));
    assert_eq!(at_events(e, e4, e5).await, updates(&[a, c], &[]));
    assert_eq!(at_events(b, e4, e5).await, updates(&[], &[]), "b is not in that room");
    assert_eq!(seen(a, (pb, pc), None).await, updates(&[c], &[]), "c's keys are a's business now");

    // b leaves the first encrypted room, which was all b shared with a and d.
    let e6 = append(&store, member(enc, "$bleave", b, "leave", 0)).await;
    assert_eq!(at_events(a, e5, e6).await, updates(&[], &[b]), "b left the only encrypted room a shared with b");
    assert_eq!(at_events(d, e5, e6).await, updates(&[], &[b]));
    assert_eq!(at_events(b, e5, e6).await, updates(&[], &[a, d]), "b left: its members are gone for b");
    assert_eq!(at_events(c, e5, e6).await, updates(&[], &[]), "c was never in that room");
    assert_eq!(seen(a, (pa, pc), None).await, updates(&[c], &[]), "b's keys are no longer a's business");

    // c joins and leaves it again, while still sharing the other one.
    let e7 = append(&store, member(enc, "$cjoinenc", c, "join", 0)).await;
    assert_eq!(at_events(a, e6, e7).await, updates(&[c], &[]), "a join is news even with a room shared already");
    assert_eq!(at_events(c, e6, e7).await, updates(&[a, d], &[]));
    let e8 = append(&store, member(enc, "$cleaveenc", c, "leave", 0)).await;
    assert_eq!(at_events(a, e7, e8).await, updates(&[], &[]), "c still shares an encrypted room with a: not left");
    assert_eq!(at_events(c, e7, e8).await, updates(&[], &[d]), "c shares nothing with d anymore, and a still");

    // d is banned.
    let e9 = append(&store, member(enc, "$dban", d, "ban", 0)).await;
    assert_eq!(at_events(a, e8, e9).await, updates(&[], &[d]), "a banned member is left");
    assert_eq!(at_events(d, e8, e9).await, updates(&[], &[a]));

    // a leaves the room that became encrypted.
    let e10 = append(&store, member(plain, "$aleaveplain", a, "leave", 0)).await;
    assert_eq!(at_events(a, e9, e10).await, updates(&[], &[c, e]), "a left: the room's members are gone for a");
    assert_eq!(at_events(c, e9, e10).await, updates(&[], &[a]));
    assert_eq!(at_events(e, e9, e10).await, updates(&[], &[a]));

    // All of it at once: each user once, sorted.
    assert_eq!(at_events(a, e0, e10).await, updates(&[], &[b, c, d, e]), "the whole story for a");
    assert_eq!(seen(a, (start, pc), None).await, updates(&[a], &[]), "a shares no encrypted room with anyone now");
}

/// Uploads device keys, one-time keys and a fallback key for each device.
async fn full_keys(store: &DynStore, user: &str, devices: &[&str]) {
    for device in devices {
        let upload = KeyUpload {
            device_keys: Some(device_keys_json(user, device, 1)),
            one_time_keys: vec![one_time(SC, &format!("{device}1"), "k")],
            fallback_keys: vec![one_time(SC, &format!("{device}F"), "f")],
        };
        store.upload_keys(user, device, upload, KEYS).await.unwrap();
    }
}

/// The device's keys, one-time and fallback keys and inbox are gone.
async fn assert_device_cleared(store: &DynStore, user: &str, device: &str) {
    let keys = store.device_keys(&[(user.to_owned(), vec![device.to_owned()])]).await.unwrap();
    assert!(keys.is_empty(), "{user} {device}: device keys left: {keys:?}");
    let claimed = store.claim_keys(&[claim(user, device, SC)]).await.unwrap();
    assert!(claimed.is_empty(), "{user} {device}: a one-time or fallback key left: {claimed:?}");
    let up_to = to_device_pos(store).await;
    let inbox = store.to_device_inbox(user, device, 0, up_to, 100).await.unwrap();
    assert_eq!(inbox, ToDeviceInbox::default(), "{user} {device}: to-device messages left");
}

/// The device's keys and inbox are still there (nothing claimed).
async fn assert_device_kept(store: &DynStore, user: &str, device: &str) {
    let keys = store.device_keys(&[(user.to_owned(), vec![device.to_owned()])]).await.unwrap();
    assert_eq!(keys.len(), 1, "{user} {device}: device keys kept");
    assert_eq!(key_counts(store, user, device).await, (counts(&[(SC, 1)]), vec![SC.to_owned()]), "{user} {device}");
    let up_to = to_device_pos(store).await;
    let inbox = store.to_device_inbox(user, device, 0, up_to, 100).await.unwrap();
    assert!(!inbox.messages.is_empty(), "{user} {device}: inbox kept");
}

fn to_device(user: &str, device: Option<&str>, content: serde_json::Value) -> ToDeviceMessage {
    ToDeviceMessage { user_id: user.into(), device_id: device.map(Into::into), content: content.to_string() }
}

/// Runs a device deletion and checks that it moved `user` in the
/// device-list stream, as `user` and as `peer` (who shares an encrypted
/// room with them) see it.
async fn moves(store: &DynStore, user: &str, peer: &str, what: &str, deletion: impl Future<Output = StoreResult<()>>) {
    let before = device_list_pos(store).await;
    deletion.await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let after = device_list_pos(store).await;
    assert!(after > before, "{what} moves the user in the device-list stream");
    for me in [user, peer] {
        let seen = store.device_list_updates(me, (before, after), None).await.unwrap();
        assert!(seen.changed.iter().any(|u| u == user), "{what}: {me} sees {user} changed: {seen:?}");
    }
}

pub async fn deleting_devices_deletes_their_keys_and_inbox(store: DynStore) {
    let (a, b) = ("@a:x", "@b:x");
    let devices = ["ONE", "TWO", "THREE", "FOUR"];
    user_with(&store, a, &devices).await;
    user_with(&store, b, &["DEVB"]).await;
    encrypted_room(&store, "!enc:x", &[a, b]).await;
    full_keys(&store, a, &devices).await;
    store.send_to_device(b, "DEVB", "t", "m.test", &[to_device(a, None, json!({"n": 1}))], 100).await.unwrap();
    // ONE used a transaction id, which goes with it.
    store.send_to_device(a, "ONE", "txn", "m.test", &[to_device(b, Some("DEVB"), json!({"n": 2}))], 100).await.unwrap();

    // ONE and TWO signed a's master key; ONE's signature goes with ONE.
    let by_two = signature(a, "AM", a, "ed25519:TWO", "sig-am-two");
    store.add_key_signatures(&[signature(a, "AM", a, "ed25519:ONE", "sig-am-one"), by_two.clone()]).await.unwrap();

    moves(&store, a, b, "delete_devices", store.delete_devices(a, &["ONE".into(), "MISSING".into()])).await;
    assert_device_cleared(&store, a, "ONE").await;
    assert_eq!(signatures_on(&store, &[a]).await, rows(&[&by_two]), "the signature ONE made went with it");
    for kept in ["TWO", "THREE", "FOUR"] {
        assert_device_kept(&store, a, kept).await;
    }
    // A device of the same id later starts empty, its transaction ids too.
    store.upsert_device(device_of(a, "ONE"), MAX_DEVICES).await.unwrap();
    assert_device_cleared(&store, a, "ONE").await;
    assert_eq!(key_counts(&store, a, "ONE").await, (counts(&[]), vec![]), "no key comes back with the device id");
    let reused = store.send_to_device(a, "ONE", "txn", "m.test", &[to_device(b, Some("DEVB"), json!({"n": 3}))], 100).await;
    assert!(reused.is_ok(), "the deleted device's transaction ids went with it: {reused:?}");

    // A password change without logging out deletes nothing.
    store.change_password(a, "hash-2", false, Some("TWO")).await.unwrap();
    assert_device_kept(&store, a, "THREE").await;
    moves(&store, a, b, "change_password with logout", store.change_password(a, "hash-3", true, Some("TWO"))).await;
    for gone in ["ONE", "THREE", "FOUR"] {
        assert_device_cleared(&store, a, gone).await;
    }
    assert_device_kept(&store, a, "TWO").await;

    store.upsert_device(device_of(a, "FIVE"), MAX_DEVICES).await.unwrap();
    full_keys(&store, a, &["FIVE"]).await;
    store.send_to_device(b, "DEVB", "t2", "m.test", &[to_device(a, Some("FIVE"), json!({"n": 4}))], 100).await.unwrap();
    moves(&store, a, b, "delete_all_devices keeping one", store.delete_all_devices(a, Some("TWO"))).await;
    assert_device_cleared(&store, a, "FIVE").await;
    assert_device_kept(&store, a, "TWO").await;
    moves(&store, a, b, "delete_all_devices", store.delete_all_devices(a, None)).await;
    assert_device_cleared(&store, a, "TWO").await;
    assert!(store.device_keys(&[(a.to_owned(), vec![])]).await.unwrap().is_empty(), "no device keys of a left");
    // b's keys and inbox are b's.
    full_keys(&store, b, &["DEVB"]).await;
    assert_device_kept(&store, b, "DEVB").await;
}

const BACKUPS: BackupLimits = BackupLimits { max_keys: 3, max_versions: 2 };

fn backed_up(room: &str, session: &str, index: u64, forwarded: u64, verified: bool, data: &str) -> BackedUpKey {
    BackedUpKey {
        room_id: room.into(),
        session_id: session.into(),
        first_message_index: index,
        forwarded_count: forwarded,
        is_verified: verified,
        session_data: json!({"ciphertext": data}).to_string(),
    }
}

pub async fn deactivation_deletes_every_key_of_the_account(store: DynStore) {
    use CrossSigningKeyKind::{Master, SelfSigning, UserSigning};
    let (a, b) = ("@a:x", "@b:x");
    user_with(&store, a, &["ONE", "TWO"]).await;
    user_with(&store, b, &["DEVB"]).await;
    encrypted_room(&store, "!enc:x", &[a, b]).await;
    full_keys(&store, a, &["ONE", "TWO"]).await;
    full_keys(&store, b, &["DEVB"]).await;
    store.send_to_device(b, "DEVB", "t", "m.test", &[to_device(a, None, json!({"n": 1}))], 100).await.unwrap();
    // What a sent is b's: it stays in b's inbox.
    store.send_to_device(a, "ONE", "t", "m.test", &[to_device(b, None, json!({"n": 2}))], 100).await.unwrap();
    store
        .set_cross_signing_keys(
            a,
            &[cross_signing(a, Master, "AM"), cross_signing(a, SelfSigning, "AS"), cross_signing(a, UserSigning, "AU")],
        )
        .await
        .unwrap();
    store.set_cross_signing_keys(b, &[cross_signing(b, Master, "BM"), cross_signing(b, UserSigning, "BU")]).await.unwrap();
    let b_own = signature(b, "BM", b, "ed25519:DEVB", "sig-devb-bm");
    store
        .add_key_signatures(&[
            signature(a, "AM", a, "ed25519:ONE", "sig-one-am"),
            signature(a, "ONE", a, "ed25519:AS", "sig-as-one"),
            signature(a, "AM", b, "ed25519:BU", "sig-bu-am"),
            signature(b, "BM", a, "ed25519:AU", "sig-au-bm"),
            b_own.clone(),
        ])
        .await
        .unwrap();
    let version = store.create_backup_version(a, "m.megolm_backup.v1.curve25519-aes-sha2", "{}", BACKUPS).await.unwrap();
    store.put_backed_up_keys(a, &version, &[backed_up("!enc:x", "s", 0, 0, true, "d")], BACKUPS).await.unwrap();
    let dehydrated = NewDevice { tokens: tokens_of("dehydrated"), ..device_of(a, "DEHYDRATED") };
    store
        .put_dehydrated_device(dehydrated, r#"{"data":1}"#, device_keys_only(a, "DEHYDRATED", 1), KEYS, MAX_DEVICES)
        .await
        .unwrap();

    moves(&store, a, b, "deactivate_account", store.deactivate_account(a, 10_000)).await;
    for device in ["ONE", "TWO", "DEHYDRATED"] {
        assert_device_cleared(&store, a, device).await;
    }
    assert!(store.devices(a).await.unwrap().is_empty());
    assert!(store.device_keys(&[(a.to_owned(), vec![])]).await.unwrap().is_empty(), "no device keys of a left");
    assert!(store.cross_signing_keys(&[a.to_owned()]).await.unwrap().is_empty(), "a's cross-signing keys are gone");
    assert!(signatures_on(&store, &[a]).await.is_empty(), "signatures on a's keys are gone");
    assert_eq!(signatures_on(&store, &[b]).await, rows(&[&b_own]), "a's signature on b's key is gone, b's own kept");
    assert_eq!(store.backup_version(a, None).await.unwrap(), None, "a has no backup");
    assert_eq!(store.backup_version(a, Some(&version)).await.unwrap(), None, "a's backup versions are gone");
    assert_eq!(store.backed_up_keys(a, &version, BackupScope::All).await.unwrap(), None, "with their keys");
    assert_eq!(store.dehydrated_device(a).await.unwrap(), None, "a's dehydrated device is gone");
    // b keeps everything of b's.
    assert_eq!(cross_signing_of(&store, b).await.len(), 2);
    assert_device_kept(&store, b, "DEVB").await;
}

fn tokens_of(name: &str) -> TokenPair {
    TokenPair { access_token_hash: format!("access-{name}"), access_expires_ts: None, refresh_token_hash: None }
}

/// Contents of a device's inbox from `after` up to the current position.
async fn inbox_contents(store: &DynStore, user: &str, device: &str, after: u64) -> Vec<serde_json::Value> {
    let up_to = to_device_pos(store).await;
    let inbox = store.to_device_inbox(user, device, after, up_to, 100).await.unwrap();
    inbox.messages.iter().map(|m| serde_json::from_str(&m.content).expect("stored content is JSON")).collect()
}

/// A device's transaction ids are remembered, the newest
/// `MAX_TO_DEVICE_TXNS_PER_DEVICE` of them: the oldest is forgotten once
/// that many newer ones were used, so the table does not grow with every
/// request a device ever made.
pub async fn to_device_transaction_ids_are_remembered_per_device_and_bounded(store: DynStore) {
    use chancery_proto::limits::MAX_TO_DEVICE_TXNS_PER_DEVICE;
    user_with(&store, "@a:x", &["ONE", "TWO"]).await;
    let send = |device: &'static str, txn: String| {
        let store = store.clone();
        async move { store.send_to_device("@a:x", device, &txn, "m.test", &[], 10).await }
    };
    send("ONE", "first".into()).await.unwrap();
    assert!(matches!(send("ONE", "first".into()).await, Err(StoreError::TransactionIdUsed)));
    // Another device of the user has ids of its own.
    send("TWO", "first".into()).await.unwrap();
    for n in 0..MAX_TO_DEVICE_TXNS_PER_DEVICE - 1 {
        send("ONE", format!("t{n}")).await.unwrap();
    }
    // `first` is still among the newest: refused.
    assert!(matches!(send("ONE", "first".into()).await, Err(StoreError::TransactionIdUsed)));
    send("ONE", "one more".into()).await.unwrap();
    // Now it is forgotten, the next-oldest not.
    send("ONE", "first".into()).await.expect("the oldest id is forgotten");
    assert!(matches!(send("ONE", "t1".into()).await, Err(StoreError::TransactionIdUsed)));
    assert!(matches!(send("TWO", "first".into()).await, Err(StoreError::TransactionIdUsed)));
}

/// `device_sync_state` reads what `to_device_inbox` and `key_counts` read.
pub async fn device_sync_state_is_the_inbox_and_the_key_counts(store: DynStore) {
    let (a, b) = ("@a:x", "@b:x");
    user_with(&store, a, &["A1"]).await;
    user_with(&store, b, &["B1"]).await;
    full_keys(&store, b, &["B1"]).await;
    for n in 0..3 {
        store
            .send_to_device(a, "A1", &format!("t{n}"), "m.test", &[to_device(b, Some("B1"), json!({"n": n}))], 100)
            .await
            .unwrap();
    }
    let up_to = to_device_pos(&store).await;
    for (after, limit) in [(0, 100), (0, 2), (up_to - 1, 100), (up_to, 100)] {
        let state = store.device_sync_state(b, "B1", after, up_to, limit).await.unwrap();
        assert_eq!(
            state.inbox,
            store.to_device_inbox(b, "B1", after, up_to, limit).await.unwrap(),
            "after {after}, limit {limit}"
        );
        let (counts, fallbacks) = store.key_counts(b, "B1").await.unwrap();
        assert_eq!((state.one_time_key_counts, state.unused_fallback_key_types), (counts, fallbacks));
    }
    let empty = store.device_sync_state(a, "A1", 0, up_to, 100).await.unwrap();
    assert_eq!(empty, DeviceSyncState::default(), "a device with no keys and no messages");
}

/// One sender fills at most `MAX_TO_DEVICE_FROM_ONE_SENDER` of a device's
/// inbox: a flood from one user leaves the rest for everyone else.
pub async fn one_sender_fills_only_its_share_of_an_inbox(store: DynStore) {
    use chancery_proto::limits::MAX_TO_DEVICE_FROM_ONE_SENDER;
    let share = MAX_TO_DEVICE_FROM_ONE_SENDER as usize;
    let (flooder, other, victim) = ("@f:x", "@o:x", "@v:x");
    user_with(&store, flooder, &["F1"]).await;
    user_with(&store, other, &["O1"]).await;
    user_with(&store, victim, &["V1"]).await;
    let flood: Vec<ToDeviceMessage> = (0..share + 1).map(|n| to_device(victim, Some("V1"), json!({"n": n}))).collect();
    let queued = store.send_to_device(flooder, "F1", "flood", "m.test", &flood, 10 * share).await.unwrap();
    assert_eq!((queued.queued, queued.dropped_full), (share, 1), "the flooder's share is full");
    let more = store.send_to_device(flooder, "F1", "more", "m.test", &flood[..1], 10 * share).await.unwrap();
    assert_eq!((more.queued, more.dropped_full), (0, 1), "and stays full in a later request");
    let key = store.send_to_device(other, "O1", "key", "m.test", &flood[..1], 10 * share).await.unwrap();
    assert_eq!((key.queued, key.dropped_full), (1, 0), "another sender still reaches the device");
}

pub async fn to_device_messages_are_queued_bounded_and_acknowledged(store: DynStore) {
    let (a, b) = ("@a:x", "@b:x");
    user_with(&store, a, &["A1", "A2"]).await;
    user_with(&store, b, &["B1", "B2", "B3"]).await;
    assert_eq!(to_device_pos(&store).await, 0);

    let start = to_device_pos(&store).await;
    let messages = [
        to_device(b, Some("B1"), json!({"n": 1})),
        to_device(b, None, json!({"n": 2})),
        to_device(b, Some("NOPE"), json!({"n": 3})),
        to_device("@ghost:x", None, json!({"n": 4})),
        to_device("@ghost:x", Some("G"), json!({"n": 5})),
    ];
    let queued = store.send_to_device(a, "A1", "t1", "m.test", &messages, 100).await.unwrap();
    assert_eq!(queued, ToDeviceQueued { queued: 4, dropped_full: 0 }, "`*` is every device of b; unknown devices are skipped");
    let after_first = to_device_pos(&store).await;
    assert!(after_first >= start + 4, "each message its own position ({start} -> {after_first})");

    let b1 = store.to_device_inbox(b, "B1", start, after_first, 100).await.unwrap();
    assert!(!b1.acknowledged_waiting);
    assert_eq!(b1.messages.len(), 2, "{b1:?}");
    assert!(b1.messages[0].stream_pos < b1.messages[1].stream_pos, "in position order");
    assert!(b1.messages.iter().all(|m| m.stream_pos > start && m.stream_pos <= after_first));
    for m in &b1.messages {
        assert_eq!((m.sender.as_str(), m.event_type.as_str()), (a, "m.test"));
    }
    assert_eq!(inbox_contents(&store, b, "B1", 0).await, [json!({"n": 1}), json!({"n": 2})], "in the order sent");
    for device in ["B2", "B3"] {
        assert_eq!(inbox_contents(&store, b, device, 0).await, [json!({"n": 2})], "{device} got the `*` message");
    }
    for device in ["A1", "A2"] {
        assert!(inbox_contents(&store, a, device, 0).await.is_empty(), "nothing for the sender's devices");
    }

    // The same transaction of the same device: refused, nothing queued.
    let again = store.send_to_device(a, "A1", "t1", "m.test", &[to_device(b, Some("B2"), json!({"n": 6}))], 100).await;
    assert!(matches!(again, Err(StoreError::TransactionIdUsed)), "{again:?}");
    assert_eq!(to_device_pos(&store).await, after_first, "a refused send takes no position");
    assert_eq!(inbox_contents(&store, b, "B2", 0).await, [json!({"n": 2})], "nothing queued twice");
    // Another device may use the same id.
    let other = store.send_to_device(a, "A2", "t1", "m.test", &[to_device(b, Some("B2"), json!({"n": 6}))], 100).await.unwrap();
    assert_eq!(other, ToDeviceQueued { queued: 1, dropped_full: 0 }, "transaction ids are per device");
    assert_eq!(inbox_contents(&store, b, "B2", 0).await, [json!({"n": 2}), json!({"n": 6})]);

    // Inboxes hold at most two here: B3 holds one.
    let three = [
        to_device(b, Some("B3"), json!({"n": 7})),
        to_device(b, Some("B3"), json!({"n": 8})),
        to_device(b, Some("B3"), json!({"n": 9})),
    ];
    let bounded = store.send_to_device(a, "A1", "t2", "m.test", &three, 2).await.unwrap();
    assert_eq!(bounded, ToDeviceQueued { queued: 1, dropped_full: 2 }, "a full inbox drops what comes");
    assert_eq!(inbox_contents(&store, b, "B3", 0).await, [json!({"n": 2}), json!({"n": 7})], "the first fitted");
    let all_full = store.send_to_device(a, "A1", "t3", "m.test", &[to_device(b, None, json!({"n": 10}))], 2).await.unwrap();
    assert_eq!(all_full, ToDeviceQueued { queued: 0, dropped_full: 3 }, "every one of b's inboxes is full");

    // Reading in ranges, with a limit; acknowledging by deleting.
    let up_to = to_device_pos(&store).await;
    let all = store.to_device_inbox(b, "B1", 0, up_to, 100).await.unwrap().messages;
    let (m1, m2) = (all[0].stream_pos, all[1].stream_pos);
    let first = store.to_device_inbox(b, "B1", 0, up_to, 1).await.unwrap();
    assert_eq!(first.messages, all[..1], "the limit cuts the read");
    assert!(!first.acknowledged_waiting);
    assert_eq!(store.to_device_inbox(b, "B1", 0, m1, 100).await.unwrap().messages, all[..1], "nothing after up_to");
    let rest = store.to_device_inbox(b, "B1", m1, up_to, 100).await.unwrap();
    assert_eq!(rest.messages, all[1..], "nothing at or below after");
    assert!(rest.acknowledged_waiting, "the message at {m1} is acknowledged but still stored");
    store.delete_to_device(b, "B1", m1).await.unwrap();
    let rest = store.to_device_inbox(b, "B1", m1, up_to, 100).await.unwrap();
    assert_eq!(rest.messages, all[1..]);
    assert!(!rest.acknowledged_waiting, "deleted up to the acknowledged position");
    assert_eq!(store.to_device_inbox(b, "B1", 0, up_to, 100).await.unwrap().messages, all[1..]);
    store.delete_to_device(b, "B1", m2).await.unwrap();
    assert!(inbox_contents(&store, b, "B1", 0).await.is_empty());
    assert_eq!(inbox_contents(&store, b, "B2", 0).await.len(), 2, "another device's inbox is its own");

    // Deleting every message does not take the position back.
    for device in ["B2", "B3"] {
        store.delete_to_device(b, device, up_to).await.unwrap();
    }
    assert_eq!(to_device_pos(&store).await, up_to, "deletes never take the to-device position back");
    store.send_to_device(b, "B1", "t1", "m.test", &[to_device(a, Some("A1"), json!({"n": 11}))], 100).await.unwrap();
    let next = to_device_pos(&store).await;
    assert!(next > up_to, "a position once handed out is not handed out again");
    let got = store.to_device_inbox(a, "A1", 0, next, 100).await.unwrap().messages;
    assert_eq!(got.len(), 1);
    assert!(got[0].stream_pos > up_to && got[0].stream_pos <= next);
    assert_eq!(got[0].sender, b);
}

const BACKUP_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

async fn current_backup(store: &DynStore, user: &str) -> Option<String> {
    store.backup_version(user, None).await.unwrap().map(|v| v.version)
}

pub async fn backup_versions_are_numbered_and_bounded(store: DynStore) {
    let (a, b) = ("@a:x", "@b:x");
    user_with(&store, a, &["DEV"]).await;
    user_with(&store, b, &["DEV"]).await;
    assert_eq!(store.backup_version(a, None).await.unwrap(), None);
    let key = [backed_up("!r:x", "s1", 0, 0, false, "d")];
    let none = store.put_backed_up_keys(a, "1", &key, BACKUPS).await;
    assert!(matches!(none, Err(StoreError::WrongBackupVersion(None))), "{none:?}");

    let auth = r#"{"public_key":"pk1"}"#;
    assert_eq!(store.create_backup_version(a, BACKUP_ALGORITHM, auth, BACKUPS).await.unwrap(), "1");
    let first = store.backup_version(a, None).await.unwrap().expect("the current version");
    assert_eq!(
        (first.version.as_str(), first.algorithm.as_str(), first.auth_data.as_str(), first.count),
        ("1", BACKUP_ALGORITHM, auth, 0)
    );
    assert_eq!(store.create_backup_version(a, BACKUP_ALGORITHM, auth, BACKUPS).await.unwrap(), "2");
    assert_eq!(current_backup(&store, a).await.as_deref(), Some("2"), "the newest version is the current one");
    assert_eq!(store.backup_version(a, Some("1")).await.unwrap(), Some(first), "older versions stay readable");
    let over = store.create_backup_version(a, BACKUP_ALGORITHM, auth, BACKUPS).await;
    assert!(matches!(over, Err(StoreError::TooManyBackupVersions)), "{over:?}");
    assert_eq!(current_backup(&store, a).await.as_deref(), Some("2"));
    assert_eq!(store.create_backup_version(b, BACKUP_ALGORITHM, auth, BACKUPS).await.unwrap(), "1", "numbers are per user");

    let old = store.put_backed_up_keys(a, "1", &key, BACKUPS).await;
    assert!(matches!(&old, Err(StoreError::WrongBackupVersion(Some(v))) if v == "2"), "{old:?}");
    assert_eq!(store.backed_up_keys(a, "1", BackupScope::All).await.unwrap(), Some(vec![]), "nothing stored");

    // Deleting: the highest left is the current one; numbers are not reused.
    assert!(store.delete_backup_version(a, "2").await.unwrap());
    assert!(!store.delete_backup_version(a, "2").await.unwrap(), "deleted once");
    assert!(!store.delete_backup_version(a, "9").await.unwrap(), "never created");
    assert_eq!(store.backup_version(a, Some("2")).await.unwrap(), None);
    assert_eq!(current_backup(&store, a).await.as_deref(), Some("1"), "the highest version not deleted");
    let stored = store.put_backed_up_keys(a, "1", &key, BACKUPS).await.unwrap();
    assert_eq!((stored.version.as_str(), stored.count), ("1", 1), "the older version is current again");
    assert_eq!(
        store.create_backup_version(a, BACKUP_ALGORITHM, auth, BACKUPS).await.unwrap(),
        "3",
        "2 is never handed out again"
    );
    assert_eq!(current_backup(&store, a).await.as_deref(), Some("3"));
    let old = store.put_backed_up_keys(a, "2", &key, BACKUPS).await;
    assert!(matches!(&old, Err(StoreError::WrongBackupVersion(Some(v))) if v == "3"), "{old:?}");

    // Updating: the auth data only.
    let auth2 = r#"{"public_key":"pk2"}"#;
    assert!(store.update_backup_version(a, "3", BACKUP_ALGORITHM, auth2).await.unwrap());
    assert_eq!(store.backup_version(a, Some("3")).await.unwrap().unwrap().auth_data, auth2);
    let mismatch = store.update_backup_version(a, "3", "org.example.other", auth).await;
    assert!(matches!(mismatch, Err(StoreError::BackupAlgorithmMismatch)), "{mismatch:?}");
    assert_eq!(store.backup_version(a, Some("3")).await.unwrap().unwrap().auth_data, auth2, "a refused update changes nothing");
    assert!(!store.update_backup_version(a, "9", BACKUP_ALGORITHM, auth).await.unwrap(), "no version 9");
    assert!(!store.update_backup_version(a, "2", BACKUP_ALGORITHM, auth).await.unwrap(), "version 2 is deleted");
    assert!(!store.update_backup_version(b, "3", BACKUP_ALGORITHM, auth).await.unwrap(), "versions are per user");

    // A deleted version's keys go with it.
    assert!(store.delete_backup_version(a, "1").await.unwrap());
    assert_eq!(store.backed_up_keys(a, "1", BackupScope::All).await.unwrap(), None);
    assert_eq!(store.delete_backed_up_keys(a, "1", BackupScope::All).await.unwrap(), None);
    assert_eq!(store.backed_up_keys(b, "1", BackupScope::All).await.unwrap(), Some(vec![]), "b's version 1 is b's");
}

pub async fn backed_up_keys_keep_the_better_one_per_session(store: DynStore) {
    let a = "@a:x";
    user_with(&store, a, &["DEV"]).await;
    let v = store.create_backup_version(a, BACKUP_ALGORITHM, "{}", BACKUPS).await.unwrap();
    let empty = store.backup_version(a, Some(&v)).await.unwrap().unwrap();
    assert_eq!(empty.count, 0);

    let k1 = backed_up("!r:x", "s1", 5, 1, false, "first");
    let put = store.put_backed_up_keys(a, &v, std::slice::from_ref(&k1), BACKUPS).await.unwrap();
    assert_eq!(put.count, 1);
    assert_ne!(put.etag, empty.etag, "a new key moves the etag");
    assert_eq!(store.backup_version(a, Some(&v)).await.unwrap().unwrap(), put, "the answer is the version as stored");

    // Nothing better: nothing changes, the etag neither.
    let mut etag = put.etag;
    for (worse, why) in [
        (k1.clone(), "the same key"),
        (backed_up("!r:x", "s1", 6, 0, false, "later index"), "a higher first message index"),
        (backed_up("!r:x", "s1", 5, 2, false, "more forwards"), "more forwards"),
    ] {
        let put = store.put_backed_up_keys(a, &v, &[worse], BACKUPS).await.unwrap();
        assert_eq!((put.count, put.etag.as_str()), (1, etag.as_str()), "{why} changes nothing");
    }
    assert_eq!(store.backed_up_keys(a, &v, BackupScope::All).await.unwrap(), Some(vec![k1.clone()]));

    // Better keys replace it, each time with a new etag.
    for (better, why) in [
        (backed_up("!r:x", "s1", 5, 0, false, "fewer forwards"), "fewer forwards"),
        (backed_up("!r:x", "s1", 3, 4, false, "lower index"), "a lower first message index"),
        (backed_up("!r:x", "s1", 9, 9, true, "verified"), "verified"),
    ] {
        let put = store.put_backed_up_keys(a, &v, std::slice::from_ref(&better), BACKUPS).await.unwrap();
        assert_eq!(put.count, 1, "{why}: still one session");
        assert_ne!(put.etag, etag, "{why}: the etag moves");
        etag = put.etag;
        assert_eq!(store.backed_up_keys(a, &v, BackupScope::All).await.unwrap(), Some(vec![better]), "{why} wins");
    }
    let verified = backed_up("!r:x", "s1", 9, 9, true, "verified");
    let unverified = backed_up("!r:x", "s1", 0, 0, false, "unverified");
    let put = store.put_backed_up_keys(a, &v, &[unverified], BACKUPS).await.unwrap();
    assert_eq!(put.etag, etag, "an unverified key never replaces a verified one");

    // More sessions, up to the bound of three.
    let k2 = backed_up("!r:x", "s2", 0, 0, false, "s2");
    let k3 = backed_up("!a:x", "s1", 0, 0, false, "a-s1");
    let put = store.put_backed_up_keys(a, &v, &[k2.clone(), k3.clone()], BACKUPS).await.unwrap();
    assert_eq!(put.count, 3);
    etag = put.etag;
    let k4 = backed_up("!z:x", "s1", 0, 0, false, "z-s1");
    let better_k2 = backed_up("!r:x", "s2", 0, 0, true, "s2 verified");
    let over = store.put_backed_up_keys(a, &v, &[better_k2.clone(), k4.clone()], BACKUPS).await;
    assert!(matches!(over, Err(StoreError::TooManyBackedUpKeys)), "{over:?}");
    let now = store.backup_version(a, Some(&v)).await.unwrap().unwrap();
    assert_eq!((now.count, now.etag.as_str()), (3, etag.as_str()), "nothing of a refused put is stored");
    assert_eq!(
        store.backed_up_keys(a, &v, BackupScope::Session { room_id: "!r:x", session_id: "s2" }).await.unwrap(),
        Some(vec![k2.clone()])
    );
    let put = store.put_backed_up_keys(a, &v, std::slice::from_ref(&better_k2), BACKUPS).await.unwrap();
    assert_eq!(put.count, 3, "replacing a session at the bound is allowed");

    // Reads by scope, sorted by room then session.
    let all = vec![k3.clone(), verified.clone(), better_k2.clone()];
    assert_eq!(store.backed_up_keys(a, &v, BackupScope::All).await.unwrap(), Some(all));
    assert_eq!(
        store.backed_up_keys(a, &v, BackupScope::Room("!r:x")).await.unwrap(),
        Some(vec![verified.clone(), better_k2.clone()])
    );
    assert_eq!(
        store.backed_up_keys(a, &v, BackupScope::Session { room_id: "!r:x", session_id: "s1" }).await.unwrap(),
        Some(vec![verified.clone()])
    );
    assert_eq!(store.backed_up_keys(a, &v, BackupScope::Room("!nope:x")).await.unwrap(), Some(vec![]));
    assert_eq!(store.backed_up_keys(a, "99", BackupScope::All).await.unwrap(), None, "no such version");
    assert_eq!(store.backed_up_keys("@b:x", &v, BackupScope::All).await.unwrap(), None, "versions are per user");

    // Deletes by scope answer the version as it is afterwards.
    let etag = store.backup_version(a, Some(&v)).await.unwrap().unwrap().etag;
    let after =
        store.delete_backed_up_keys(a, &v, BackupScope::Session { room_id: "!r:x", session_id: "s2" }).await.unwrap().unwrap();
    assert_eq!(after.count, 2);
    assert_ne!(after.etag, etag, "deleting a key moves the etag");
    assert_eq!(store.backed_up_keys(a, &v, BackupScope::Room("!r:x")).await.unwrap(), Some(vec![verified.clone()]));
    let after = store.delete_backed_up_keys(a, &v, BackupScope::Room("!a:x")).await.unwrap().unwrap();
    assert_eq!(after.count, 1);
    assert_eq!(store.backed_up_keys(a, &v, BackupScope::All).await.unwrap(), Some(vec![verified]));
    store.put_backed_up_keys(a, &v, &[k3, k4], BACKUPS).await.unwrap();
    let after = store.delete_backed_up_keys(a, &v, BackupScope::All).await.unwrap().unwrap();
    assert_eq!(after.count, 0);
    assert_eq!(store.backed_up_keys(a, &v, BackupScope::All).await.unwrap(), Some(vec![]));
    assert_eq!(store.delete_backed_up_keys(a, "99", BackupScope::All).await.unwrap(), None, "no such version");
}

pub async fn dehydrated_device_is_replaced_whole(store: DynStore) {
    let a = "@a:x";
    user_with(&store, a, &["PHONE"]).await;
    assert_eq!(store.dehydrated_device(a).await.unwrap(), None);
    assert_eq!(store.delete_dehydrated_device(a).await.unwrap(), None, "nothing to delete");

    let dehydrated = |id: &str| NewDevice { tokens: tokens_of(&format!("dehydrated-{id}")), ..device_of(a, id) };
    let keys = |id: &str| KeyUpload {
        device_keys: Some(device_keys_json(a, id, 1)),
        one_time_keys: vec![one_time(SC, &format!("{id}1"), "k")],
        fallback_keys: vec![one_time(SC, &format!("{id}F"), "f")],
    };
    let before = device_list_pos(&store).await;
    store.put_dehydrated_device(dehydrated("DEHY1"), r#"{"n":1}"#, keys("DEHY1"), KEYS, MAX_DEVICES).await.unwrap();
    assert!(device_list_pos(&store).await > before, "a new device with keys moves the device list");
    let ids = |devices: Vec<Device>| devices.into_iter().map(|d| d.device_id).collect::<Vec<_>>();
    assert_eq!(ids(store.devices(a).await.unwrap()), ["DEHY1", "PHONE"], "the dehydrated device is a device");
    assert_eq!(
        store.dehydrated_device(a).await.unwrap(),
        Some(DehydratedDevice { device_id: "DEHY1".into(), device_data: r#"{"n":1}"#.into() })
    );
    assert_eq!(
        store.device_keys(&[(a.to_owned(), vec!["DEHY1".into()])]).await.unwrap(),
        [entry(a, "DEHY1", device_keys_json(a, "DEHY1", 1), None)]
    );
    assert_eq!(key_counts(&store, a, "DEHY1").await, (counts(&[(SC, 1)]), vec![SC.to_owned()]));
    // `*` reaches it too.
    store.send_to_device(a, "PHONE", "t1", "m.test", &[to_device(a, None, json!({"n": 1}))], 100).await.unwrap();
    assert_eq!(inbox_contents(&store, a, "DEHY1", 0).await, [json!({"n": 1})], "`*` includes the dehydrated device");

    // A second one replaces the first with everything of it.
    store.put_dehydrated_device(dehydrated("DEHY2"), r#"{"n":2}"#, keys("DEHY2"), KEYS, MAX_DEVICES).await.unwrap();
    assert_eq!(ids(store.devices(a).await.unwrap()), ["DEHY2", "PHONE"], "the old dehydrated device is gone");
    assert_device_cleared(&store, a, "DEHY1").await;
    assert_eq!(store.dehydrated_device(a).await.unwrap().map(|d| d.device_id).as_deref(), Some("DEHY2"));
    assert_eq!(key_counts(&store, a, "DEHY2").await, (counts(&[(SC, 1)]), vec![SC.to_owned()]));
    // The same id again is a replacement too.
    store.put_dehydrated_device(dehydrated("DEHY2"), r#"{"n":3}"#, keys("DEHY2"), KEYS, MAX_DEVICES).await.unwrap();
    assert_eq!(
        store.dehydrated_device(a).await.unwrap(),
        Some(DehydratedDevice { device_id: "DEHY2".into(), device_data: r#"{"n":3}"#.into() })
    );
    assert_eq!(ids(store.devices(a).await.unwrap()), ["DEHY2", "PHONE"]);

    // An ordinary device's id is not the dehydrated device's to take.
    let taken = store.put_dehydrated_device(dehydrated("PHONE"), r#"{"n":4}"#, keys("PHONE"), KEYS, MAX_DEVICES).await;
    assert!(matches!(taken, Err(StoreError::DeviceIdTaken)), "{taken:?}");
    assert_eq!(store.dehydrated_device(a).await.unwrap().map(|d| d.device_id).as_deref(), Some("DEHY2"), "nothing replaced");
    assert_eq!(ids(store.devices(a).await.unwrap()), ["DEHY2", "PHONE"]);
    assert!(store.device_keys(&[(a.to_owned(), vec!["PHONE".into()])]).await.unwrap().is_empty(), "no keys given to PHONE");
    // The device bound counts it: replacing keeps two devices, a third is refused.
    store.put_dehydrated_device(dehydrated("DEHY3"), r#"{"n":5}"#, keys("DEHY3"), KEYS, 2).await.unwrap();
    let over = store.put_dehydrated_device(dehydrated("DEHY4"), r#"{"n":6}"#, keys("DEHY4"), KEYS, 1).await;
    assert!(matches!(over, Err(StoreError::TooManyDevices)), "{over:?}");
    assert_eq!(store.dehydrated_device(a).await.unwrap().map(|d| d.device_id).as_deref(), Some("DEHY3"), "nothing replaced");
    assert_eq!(ids(store.devices(a).await.unwrap()), ["DEHY3", "PHONE"]);

    let before = device_list_pos(&store).await;
    assert_eq!(store.delete_dehydrated_device(a).await.unwrap().as_deref(), Some("DEHY3"));
    assert!(device_list_pos(&store).await > before, "deleting it is a device deletion");
    assert_device_cleared(&store, a, "DEHY3").await;
    assert_eq!(ids(store.devices(a).await.unwrap()), ["PHONE"]);
    assert_eq!(store.dehydrated_device(a).await.unwrap(), None);
    assert_eq!(store.delete_dehydrated_device(a).await.unwrap(), None, "deleted once");
}
