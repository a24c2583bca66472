//! The rules a key a client uploads must follow (client-server API "End-to-End
//! Encryption": "Device keys", "One-time and fallback keys",
//! "Cross-signing"), as pure functions over its JSON: who owns it, which
//! keys it holds, and whether its signatures verify. The server stores
//! what passes in canonical JSON, so the same key always has the same
//! bytes and "the same key again" is a comparison of bytes.

use chancery_proto::limits::MAX_KEY_OBJECT_BYTES;
use chancery_proto::ruma::CanonicalJsonObject;
use chancery_proto::ruma::CanonicalJsonValue;
use chancery_proto::ruma::SigningKeyAlgorithm;
use chancery_proto::ruma::serde::Base64;
use chancery_proto::ruma::signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes};

/// Why a key was refused; the message is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Malformed(String),
    #[error("a key object is at most {MAX_KEY_OBJECT_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    WrongOwner(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("unknown key algorithm {0:?}: this server takes signed_curve25519 and curve25519 keys")]
    UnknownAlgorithm(String),
}

fn malformed(what: impl Into<String>) -> KeyError {
    KeyError::Malformed(what.into())
}

/// A key object as JSON in canonical form, without `unsigned` (the
/// server's to add, never signed).
pub fn canonical_object(raw: &str) -> Result<CanonicalJsonObject, KeyError> {
    if raw.len() > MAX_KEY_OBJECT_BYTES {
        return Err(KeyError::TooLarge);
    }
    let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| malformed(format!("a key is not JSON: {e}")))?;
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(mut object)) => {
            object.remove("unsigned");
            Ok(object)
        }
        Ok(_) => Err(malformed("a key must be a JSON object")),
        Err(e) => Err(malformed(format!("a key is not canonical JSON: {e}"))),
    }
}

/// The object serialized canonically.
pub fn to_canonical(object: &CanonicalJsonObject) -> String {
    serde_json::to_string(object).unwrap_or_default()
}

fn string_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Result<&'a str, KeyError> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(s)) => Ok(s),
        _ => Err(malformed(format!("`{field}` must be a string"))),
    }
}

fn object_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Result<&'a CanonicalJsonObject, KeyError> {
    match object.get(field) {
        Some(CanonicalJsonValue::Object(o)) => Ok(o),
        _ => Err(malformed(format!("`{field}` must be an object"))),
    }
}

/// Whether `object` carries a signature by `signer`'s key `key_id`
/// (`ed25519:<id>`) that verifies with `public_key` (unpadded base64).
pub fn verify_signature(object: &CanonicalJsonObject, signer: &str, key_id: &str, public_key: &str) -> Result<(), KeyError> {
    let bad = |why: &str| KeyError::BadSignature(format!("the signature of {signer} with {key_id} {why}"));
    let signature = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(by_signer)) => match by_signer.get(signer) {
            Some(CanonicalJsonValue::Object(by_key)) => match by_key.get(key_id) {
                Some(CanonicalJsonValue::String(s)) => s,
                _ => return Err(bad("is missing")),
            },
            _ => return Err(bad("is missing")),
        },
        _ => return Err(bad("is missing")),
    };
    let public_key = Base64::<chancery_proto::ruma::serde::base64::Standard>::parse(public_key)
        .map_err(|_| bad("names a key that is not base64"))?;
    let signature =
        Base64::<chancery_proto::ruma::serde::base64::Standard>::parse(signature).map_err(|_| bad("is not base64"))?;
    let canonical =
        to_canonical_json_string_for_signing(object).map_err(|_| bad("covers an object that cannot be serialized"))?;
    verify_canonical_json_bytes(&SigningKeyAlgorithm::Ed25519, public_key.as_bytes(), signature.as_bytes(), canonical.as_bytes())
        .map_err(|_| bad("does not verify"))
}

/// Device keys that passed [`check_device_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDeviceKeys {
    /// Canonical JSON, without `unsigned`.
    pub canonical: String,
    /// The device's ed25519 key, which signs its one-time keys.
    pub ed25519: String,
}

/// Device keys must be the uploading device's own (`user_id`,
/// `device_id`), hold its `ed25519:<device>` and `curve25519:<device>`
/// keys, list its algorithms, and be signed by the device's ed25519 key.
pub fn check_device_keys(raw: &str, user_id: &str, device_id: &str) -> Result<CheckedDeviceKeys, KeyError> {
    let object = canonical_object(raw)?;
    if string_field(&object, "user_id")? != user_id || string_field(&object, "device_id")? != device_id {
        return Err(KeyError::WrongOwner("device keys must name the uploading user and device".into()));
    }
    match object.get("algorithms") {
        Some(CanonicalJsonValue::Array(algorithms))
            if !algorithms.is_empty() && algorithms.iter().all(|a| matches!(a, CanonicalJsonValue::String(_))) => {}
        _ => return Err(malformed("`algorithms` must be a list of strings")),
    }
    let keys = object_field(&object, "keys")?;
    let key = |algorithm: &str| match keys.get(&format!("{algorithm}:{device_id}")) {
        Some(CanonicalJsonValue::String(k)) => Ok(k.clone()),
        _ => Err(malformed(format!("device keys must hold the device's {algorithm} key"))),
    };
    let ed25519 = key("ed25519")?;
    key("curve25519")?;
    verify_signature(&object, user_id, &format!("ed25519:{device_id}"), &ed25519)?;
    Ok(CheckedDeviceKeys { canonical: to_canonical(&object), ed25519 })
}

/// A one-time or fallback key that passed [`check_one_time_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOneTimeKey {
    pub algorithm: String,
    pub canonical: String,
}

/// A one-time or fallback key `<algorithm>:<id>`: `signed_curve25519`
/// (an object with a `key`, signed by the device's ed25519 key) or the
/// older unsigned `curve25519` (a string).
pub fn check_one_time_key(
    key_id: &str,
    raw: &str,
    user_id: &str,
    device_id: &str,
    device_ed25519: Option<&str>,
) -> Result<CheckedOneTimeKey, KeyError> {
    let (algorithm, id) = key_id.split_once(':').ok_or_else(|| malformed(format!("key id {key_id:?} lacks an algorithm")))?;
    if id.is_empty() {
        return Err(malformed(format!("key id {key_id:?} lacks an id")));
    }
    if raw.len() > MAX_KEY_OBJECT_BYTES {
        return Err(KeyError::TooLarge);
    }
    match algorithm {
        "signed_curve25519" => {
            let object = canonical_object(raw)?;
            string_field(&object, "key")?;
            let ed25519 = device_ed25519
                .ok_or_else(|| KeyError::BadSignature("signed keys need the device's keys uploaded first".into()))?;
            verify_signature(&object, user_id, &format!("ed25519:{device_id}"), ed25519)?;
            Ok(CheckedOneTimeKey { algorithm: algorithm.into(), canonical: to_canonical(&object) })
        }
        "curve25519" => match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::String(key)) => {
                Ok(CheckedOneTimeKey { algorithm: algorithm.into(), canonical: serde_json::Value::String(key).to_string() })
            }
            _ => Err(malformed("a curve25519 key is a string")),
        },
        other => Err(KeyError::UnknownAlgorithm(other.into())),
    }
}

/// A cross-signing key that passed [`check_cross_signing_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCrossSigningKey {
    pub object: CanonicalJsonObject,
    /// The public key, which is also its id (`ed25519:<public key>`).
    pub public_key: String,
}

impl CheckedCrossSigningKey {
    pub fn canonical(&self) -> String {
        to_canonical(&self.object)
    }

    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.public_key)
    }
}

/// A cross-signing key of `user_id` for `usage` (`master`,
/// `self_signing`, `user_signing`): it names its owner and usage and holds
/// exactly one ed25519 key, whose id is the key itself. Signatures are
/// checked by the caller, who knows which key must have signed it.
pub fn check_cross_signing_key(raw: &str, user_id: &str, usage: &str) -> Result<CheckedCrossSigningKey, KeyError> {
    let object = canonical_object(raw)?;
    if string_field(&object, "user_id")? != user_id {
        return Err(KeyError::WrongOwner("cross-signing keys must be the uploading user's".into()));
    }
    match object.get("usage") {
        Some(CanonicalJsonValue::Array(usages))
            if usages.iter().any(|u| matches!(u, CanonicalJsonValue::String(s) if s == usage)) => {}
        _ => return Err(malformed(format!("the {usage} key's `usage` must list {usage:?}"))),
    }
    let keys = object_field(&object, "keys")?;
    let mut entries = keys.iter();
    let (Some((id, CanonicalJsonValue::String(public_key))), None) = (entries.next(), entries.next()) else {
        return Err(malformed(format!("the {usage} key must hold exactly one key")));
    };
    if id.strip_prefix("ed25519:") != Some(public_key.as_str()) {
        return Err(malformed(format!("the {usage} key's id must be ed25519:<the key>")));
    }
    let public_key = public_key.clone();
    Ok(CheckedCrossSigningKey { object, public_key })
}

/// Whether two key objects are the same apart from their signatures (and
/// `unsigned`, which [`canonical_object`] already dropped).
pub fn same_apart_from_signatures(a: &CanonicalJsonObject, b: &CanonicalJsonObject) -> bool {
    let strip = |o: &CanonicalJsonObject| {
        let mut o = o.clone();
        o.remove("signatures");
        o.remove("unsigned");
        o
    };
    strip(a) == strip(b)
}

/// The signatures `signer` put on `object`, as (key id, signature).
pub fn signatures_by(object: &CanonicalJsonObject, signer: &str) -> Vec<(String, String)> {
    let Some(CanonicalJsonValue::Object(by_signer)) = object.get("signatures") else { return Vec::new() };
    let Some(CanonicalJsonValue::Object(by_key)) = by_signer.get(signer) else { return Vec::new() };
    by_key
        .iter()
        .filter_map(|(key_id, sig)| match sig {
            CanonicalJsonValue::String(sig) => Some((key_id.clone(), sig.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chancery_proto::ruma::signatures::Ed25519KeyPair;
    use serde_json::json;

    use super::*;

    fn key_pair(version: &str) -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate();
        Ed25519KeyPair::from_der(&doc, version.into()).unwrap()
    }

    fn public(pair: &Ed25519KeyPair) -> String {
        Base64::<chancery_proto::ruma::serde::base64::Standard>::new(pair.public_key().to_vec()).encode()
    }

    /// Signs `value` as `signer` with `pair` (key id `ed25519:<version>`).
    fn signed(mut value: serde_json::Value, signer: &str, pair: &Ed25519KeyPair) -> String {
        let mut object: CanonicalJsonObject = match CanonicalJsonValue::try_from(value.clone()).unwrap() {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!(),
        };
        chancery_proto::ruma::signatures::sign_json(signer, pair, &mut object).unwrap();
        value["signatures"] = serde_json::to_value(object.get("signatures").unwrap()).unwrap();
        value.to_string()
    }

    fn device_keys(pair: &Ed25519KeyPair, user: &str, device: &str) -> serde_json::Value {
        json!({
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("ed25519:{device}"): public(pair), format!("curve25519:{device}"): "curvekey" },
        })
    }

    #[test]
    fn device_keys_must_be_the_devices_own_and_self_signed() {
        let pair = key_pair("DEV");
        let good = signed(device_keys(&pair, "@a:x", "DEV"), "@a:x", &pair);
        let checked = check_device_keys(&good, "@a:x", "DEV").unwrap();
        assert_eq!(checked.ed25519, public(&pair));
        assert!(!checked.canonical.contains(' '));
        // `unsigned` is dropped, so the same keys with another display name
        // compare equal.
        let mut with_unsigned: serde_json::Value = serde_json::from_str(&good).unwrap();
        with_unsigned["unsigned"] = json!({"device_display_name": "phone"});
        assert_eq!(check_device_keys(&with_unsigned.to_string(), "@a:x", "DEV").unwrap().canonical, checked.canonical);

        assert!(matches!(check_device_keys(&good, "@b:x", "DEV"), Err(KeyError::WrongOwner(_))));
        assert!(matches!(check_device_keys(&good, "@a:x", "OTHER"), Err(KeyError::WrongOwner(_))));
        let unsigned = device_keys(&pair, "@a:x", "DEV").to_string();
        assert!(matches!(check_device_keys(&unsigned, "@a:x", "DEV"), Err(KeyError::BadSignature(_))));
        // Signed by another key than the one it holds.
        let other = key_pair("DEV");
        let forged = signed(device_keys(&pair, "@a:x", "DEV"), "@a:x", &other);
        assert!(matches!(check_device_keys(&forged, "@a:x", "DEV"), Err(KeyError::BadSignature(_))));
        // Tampered after signing.
        let mut tampered: serde_json::Value = serde_json::from_str(&good).unwrap();
        tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
        assert!(matches!(check_device_keys(&tampered.to_string(), "@a:x", "DEV"), Err(KeyError::BadSignature(_))));
        let mut no_curve = device_keys(&pair, "@a:x", "DEV");
        no_curve["keys"].as_object_mut().unwrap().remove("curve25519:DEV");
        assert!(matches!(check_device_keys(&signed(no_curve, "@a:x", &pair), "@a:x", "DEV"), Err(KeyError::Malformed(_))));
        for bad in ["[]", "\"x\"", "{", "{\"n\": 1.5}"] {
            assert!(matches!(check_device_keys(bad, "@a:x", "DEV"), Err(KeyError::Malformed(_))), "{bad}");
        }
        let huge = format!("{{\"pad\": \"{}\"}}", "a".repeat(MAX_KEY_OBJECT_BYTES));
        assert_eq!(check_device_keys(&huge, "@a:x", "DEV"), Err(KeyError::TooLarge));
    }

    #[test]
    fn one_time_keys_are_signed_by_the_device() {
        let pair = key_pair("DEV");
        let device_key = public(&pair);
        let otk = signed(json!({"key": "abc"}), "@a:x", &pair);
        let checked = check_one_time_key("signed_curve25519:AAAA", &otk, "@a:x", "DEV", Some(&device_key)).unwrap();
        assert_eq!(checked.algorithm, "signed_curve25519");
        let fallback = signed(json!({"key": "abc", "fallback": true}), "@a:x", &pair);
        assert!(check_one_time_key("signed_curve25519:F", &fallback, "@a:x", "DEV", Some(&device_key)).is_ok());
        // Without the device's keys there is nothing to check it against.
        assert!(matches!(check_one_time_key("signed_curve25519:A", &otk, "@a:x", "DEV", None), Err(KeyError::BadSignature(_))));
        let other = public(&key_pair("DEV"));
        assert!(matches!(
            check_one_time_key("signed_curve25519:A", &otk, "@a:x", "DEV", Some(&other)),
            Err(KeyError::BadSignature(_))
        ));
        assert!(check_one_time_key("curve25519:A", "\"abc\"", "@a:x", "DEV", None).is_ok());
        assert!(matches!(check_one_time_key("curve25519:A", "{}", "@a:x", "DEV", None), Err(KeyError::Malformed(_))));
        assert!(matches!(check_one_time_key("rot13:A", "\"abc\"", "@a:x", "DEV", None), Err(KeyError::UnknownAlgorithm(_))));
        assert!(matches!(check_one_time_key("nocolon", "\"abc\"", "@a:x", "DEV", None), Err(KeyError::Malformed(_))));
        assert!(matches!(check_one_time_key("curve25519:", "\"abc\"", "@a:x", "DEV", None), Err(KeyError::Malformed(_))));
    }

    /// A key pair whose key id is its own public key, as cross-signing
    /// keys are named.
    fn named_by_its_key() -> (Ed25519KeyPair, String) {
        let doc = Ed25519KeyPair::generate();
        let pk = public(&Ed25519KeyPair::from_der(&doc, "tmp".into()).unwrap());
        (Ed25519KeyPair::from_der(&doc, pk.clone()).unwrap(), pk)
    }

    #[test]
    fn cross_signing_keys_name_owner_usage_and_one_key() {
        let (master, pk) = named_by_its_key();
        let raw = json!({"user_id": "@a:x", "usage": ["master"], "keys": {format!("ed25519:{pk}"): pk}}).to_string();
        let checked = check_cross_signing_key(&raw, "@a:x", "master").unwrap();
        assert_eq!(checked.public_key, pk);
        assert_eq!(checked.key_id(), format!("ed25519:{pk}"));
        assert!(matches!(check_cross_signing_key(&raw, "@b:x", "master"), Err(KeyError::WrongOwner(_))));
        assert!(matches!(check_cross_signing_key(&raw, "@a:x", "self_signing"), Err(KeyError::Malformed(_))));
        let two = json!({"user_id": "@a:x", "usage": ["master"], "keys": {format!("ed25519:{pk}"): pk, "ed25519:b": "b"}});
        assert!(matches!(check_cross_signing_key(&two.to_string(), "@a:x", "master"), Err(KeyError::Malformed(_))));
        let misnamed = json!({"user_id": "@a:x", "usage": ["master"], "keys": {"ed25519:other": pk}});
        assert!(matches!(check_cross_signing_key(&misnamed.to_string(), "@a:x", "master"), Err(KeyError::Malformed(_))));
        // A self-signing key signed by the master key verifies against it
        // and no other.
        let (_, spk) = named_by_its_key();
        let ssk_raw = json!({"user_id": "@a:x", "usage": ["self_signing"], "keys": {format!("ed25519:{spk}"): spk}});
        let checked = check_cross_signing_key(&signed(ssk_raw, "@a:x", &master), "@a:x", "self_signing").unwrap();
        assert!(verify_signature(&checked.object, "@a:x", &format!("ed25519:{pk}"), &pk).is_ok());
        assert!(verify_signature(&checked.object, "@a:x", &format!("ed25519:{pk}"), &spk).is_err());
        assert_eq!(signatures_by(&checked.object, "@a:x").len(), 1);
        let mut same = checked.object.clone();
        same.remove("signatures");
        assert!(same_apart_from_signatures(&same, &checked.object));
    }
}
