//! Server signing keys: the document this server publishes at
//! `/_matrix/key/v2/server`, and the keys of other servers, checked and
//! kept until their `valid_until_ts`. The checks are pure functions over
//! the document and the time; [`super::Federation`] fetches.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chancery_proto::ruma::signatures::{self, Ed25519KeyPair};
use chancery_proto::ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName, SigningKeyAlgorithm};

use crate::signing::OldKey;

/// Why a key document of another server is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDocumentError {
    #[error("the key document is malformed: {0}")]
    Malformed(String),
    #[error("the key document is for {found}, not {expected}")]
    WrongServer { expected: String, found: String },
    #[error("the key document is not signed by its key {0}")]
    NotSelfSigned(String),
    #[error("the key document expired")]
    Expired,
    #[error("the key document does not hold the pinned key {0}")]
    PinnedKeyMissing(String),
}

/// What this server knows of another's keys.
#[derive(Debug, Clone)]
pub struct KnownKeys {
    /// Keys valid for requests and events, until `valid_until_ts`.
    pub verify_keys: BTreeMap<String, Vec<u8>>,
    /// Keys once valid, for events signed before `expired_ts`.
    pub old_verify_keys: BTreeMap<String, (Vec<u8>, u64)>,
    pub valid_until_ts: u64,
    /// The document as the server signed it (a notary hands it on, adding
    /// its own signature).
    pub document: CanonicalJsonObject,
}

impl KnownKeys {
    /// The key `key_id` if it may verify a request now.
    pub fn request_key(&self, key_id: &str, now_ms: u64) -> Option<&[u8]> {
        (self.valid_until_ts > now_ms).then(|| self.verify_keys.get(key_id).map(Vec::as_slice)).flatten()
    }
}

/// This server's key document, valid `validity_ms` from `now_ms`, signed,
/// with the keys it signed with before as `old_verify_keys`.
pub fn own_document(
    server_name: &ServerName,
    key: &Ed25519KeyPair,
    old_keys: &[OldKey],
    now_ms: u64,
    validity_ms: u64,
) -> CanonicalJsonObject {
    let key_id = format!("ed25519:{}", key.version());
    let public = STANDARD_NO_PAD.encode(key.public_key());
    let mut verify_keys = CanonicalJsonObject::new();
    verify_keys.insert(key_id, object([("key", CanonicalJsonValue::String(public))]));
    let mut document = CanonicalJsonObject::new();
    document.insert("server_name".into(), CanonicalJsonValue::String(server_name.to_string()));
    document.insert(
        "valid_until_ts".into(),
        CanonicalJsonValue::Integer((now_ms.saturating_add(validity_ms)).min(i64::MAX as u64).try_into().unwrap_or_default()),
    );
    document.insert("verify_keys".into(), CanonicalJsonValue::Object(verify_keys));
    let mut old_verify_keys = CanonicalJsonObject::new();
    for old in old_keys {
        let expired_ts =
            CanonicalJsonValue::Integer(i64::try_from(old.expired_ts).unwrap_or(i64::MAX).try_into().unwrap_or_default());
        let public = CanonicalJsonValue::String(STANDARD_NO_PAD.encode(&old.public_key));
        old_verify_keys.insert(old.key_id.clone(), object([("key", public), ("expired_ts", expired_ts)]));
    }
    document.insert("old_verify_keys".into(), CanonicalJsonValue::Object(old_verify_keys));
    signatures::sign_json(server_name.as_str(), key, &mut document).expect("a document of strings and numbers signs");
    document
}

/// Adds this server's signature to another server's document (notary
/// answers).
pub fn countersign(server_name: &ServerName, key: &Ed25519KeyPair, document: &CanonicalJsonObject) -> CanonicalJsonObject {
    let mut document = document.clone();
    // A malformed `signatures` was refused when the document was checked.
    let _ = signatures::sign_json(server_name.as_str(), key, &mut document);
    document
}

/// Checks a key document `expected` served: its name, that every key in
/// `verify_keys` signed it, that it has not expired, and that it holds
/// every pinned key (when the operator pinned any).
pub fn check_document(
    expected: &ServerName,
    document: CanonicalJsonObject,
    pinned: Option<&BTreeMap<String, Vec<u8>>>,
    now_ms: u64,
) -> Result<KnownKeys, KeyDocumentError> {
    let malformed = |what: &str| KeyDocumentError::Malformed(what.to_owned());
    let found = match document.get("server_name") {
        Some(CanonicalJsonValue::String(name)) => name.clone(),
        _ => return Err(malformed("server_name")),
    };
    if !found.eq_ignore_ascii_case(expected.as_str()) {
        return Err(KeyDocumentError::WrongServer { expected: expected.to_string(), found });
    }
    let valid_until_ts = match document.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).map_err(|_| malformed("valid_until_ts"))?,
        _ => return Err(malformed("valid_until_ts")),
    };
    if valid_until_ts <= now_ms {
        return Err(KeyDocumentError::Expired);
    }
    let verify_keys = key_map(document.get("verify_keys"), false).ok_or_else(|| malformed("verify_keys"))?;
    if verify_keys.is_empty() {
        return Err(malformed("verify_keys is empty"));
    }
    let old = key_map(document.get("old_verify_keys"), true).ok_or_else(|| malformed("old_verify_keys"))?;
    let signatures = match document.get("signatures") {
        Some(CanonicalJsonValue::Object(all)) => match all.get(&found) {
            Some(CanonicalJsonValue::Object(own)) => own.clone(),
            _ => return Err(KeyDocumentError::NotSelfSigned("(none)".into())),
        },
        _ => return Err(malformed("signatures")),
    };
    let canonical = signatures::to_canonical_json_string_for_signing(&document).map_err(|e| malformed(&e.to_string()))?;
    for (key_id, (key, _)) in &verify_keys {
        let signature = match signatures.get(key_id) {
            Some(CanonicalJsonValue::String(sig)) => {
                decode_base64(sig).ok_or_else(|| KeyDocumentError::NotSelfSigned(key_id.clone()))?
            }
            _ => return Err(KeyDocumentError::NotSelfSigned(key_id.clone())),
        };
        signatures::verify_canonical_json_bytes(&SigningKeyAlgorithm::Ed25519, key, &signature, canonical.as_bytes())
            .map_err(|_| KeyDocumentError::NotSelfSigned(key_id.clone()))?;
    }
    if let Some(pinned) = pinned {
        for (key_id, key) in pinned {
            if verify_keys.get(key_id).map(|(k, _)| k) != Some(key) {
                return Err(KeyDocumentError::PinnedKeyMissing(key_id.clone()));
            }
        }
    }
    Ok(KnownKeys {
        verify_keys: verify_keys.into_iter().map(|(id, (key, _))| (id, key)).collect(),
        old_verify_keys: old,
        valid_until_ts,
        document,
    })
}

/// `{"ed25519:x": {"key": "…"[, "expired_ts": n]}}` → id → (key, expired_ts);
/// keys of algorithms other than ed25519 are skipped.
fn key_map(value: Option<&CanonicalJsonValue>, old: bool) -> Option<BTreeMap<String, (Vec<u8>, u64)>> {
    let entries = match value {
        Some(CanonicalJsonValue::Object(entries)) => entries,
        None if old => return Some(BTreeMap::new()),
        _ => return None,
    };
    let mut keys = BTreeMap::new();
    for (key_id, entry) in entries {
        if !key_id.starts_with("ed25519:") {
            continue;
        }
        let CanonicalJsonValue::Object(entry) = entry else { return None };
        let Some(CanonicalJsonValue::String(key)) = entry.get("key") else { return None };
        let key = decode_base64(key)?;
        let expired = match entry.get("expired_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).ok()?,
            _ if old => return None,
            _ => 0,
        };
        keys.insert(key_id.clone(), (key, expired));
    }
    Some(keys)
}

/// Unpadded or padded standard base64 (servers send both).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

fn object<const N: usize>(entries: [(&str, CanonicalJsonValue); N]) -> CanonicalJsonValue {
    CanonicalJsonValue::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Other servers' keys in memory, at most `capacity` servers; a full
/// cache forgets the entry that expires first.
pub struct KeyCache {
    capacity: usize,
    entries: HashMap<OwnedServerName, std::sync::Arc<KnownKeys>>,
    /// Servers whose keys could not be had, and until when not to ask
    /// again (a server that does not answer is not asked per request).
    failures: HashMap<OwnedServerName, u64>,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: HashMap::new(), failures: HashMap::new() }
    }

    pub fn get(&self, server: &ServerName) -> Option<&std::sync::Arc<KnownKeys>> {
        self.entries.get(server)
    }

    pub fn insert(&mut self, server: OwnedServerName, keys: std::sync::Arc<KnownKeys>) {
        self.failures.remove(&server);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&server) {
            let first = self.entries.iter().min_by_key(|(_, k)| k.valid_until_ts).map(|(s, _)| s.clone());
            if let Some(first) = first {
                self.entries.remove(&first);
            }
        }
        self.entries.insert(server, keys);
    }

    /// Whether a fetch of `server`'s keys failed recently enough that it is
    /// not tried again yet.
    pub fn recently_failed(&self, server: &ServerName, now_ms: u64) -> bool {
        self.failures.get(server).is_some_and(|&until| until > now_ms)
    }

    pub fn note_failure(&mut self, server: OwnedServerName, until_ms: u64) {
        if self.failures.len() >= self.capacity {
            self.failures.clear();
        }
        self.failures.insert(server, until_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).unwrap()
    }

    fn name(s: &str) -> &ServerName {
        <&ServerName>::try_from(s).unwrap()
    }

    #[test]
    fn own_document_checks_as_another_servers() {
        let k = key("a1");
        let doc = own_document(name("one.example"), &k, &[], 1_000, 60_000);
        let known = check_document(name("one.example"), doc.clone(), None, 2_000).unwrap();
        assert_eq!(known.valid_until_ts, 61_000);
        assert_eq!(known.request_key("ed25519:a1", 2_000), Some(&k.public_key()[..]));
        assert_eq!(known.request_key("ed25519:a1", 61_000), None, "expired keys verify no request");
        assert_eq!(known.request_key("ed25519:zz", 2_000), None);
    }

    #[test]
    fn old_keys_are_published_and_count_for_events_only() {
        let k = key("a2");
        let old = OldKey { key_id: "ed25519:a1".into(), public_key: key("a1").public_key().to_vec(), expired_ts: 900 };
        let doc = own_document(name("one.example"), &k, std::slice::from_ref(&old), 1_000, 60_000);
        let known = check_document(name("one.example"), doc, None, 2_000).unwrap();
        assert_eq!(known.old_verify_keys.get("ed25519:a1"), Some(&(old.public_key.clone(), 900)));
        assert_eq!(known.request_key("ed25519:a1", 2_000), None, "an old key verifies no request");
    }

    #[test]
    fn refusals() {
        let k = key("a1");
        let doc = own_document(name("one.example"), &k, &[], 1_000, 60_000);
        assert!(matches!(
            check_document(name("two.example"), doc.clone(), None, 2_000),
            Err(KeyDocumentError::WrongServer { .. })
        ));
        assert_eq!(check_document(name("one.example"), doc.clone(), None, 61_000).unwrap_err(), KeyDocumentError::Expired);
        // Tampered: a later expiry than the one signed.
        let mut tampered = doc.clone();
        tampered.insert("valid_until_ts".into(), CanonicalJsonValue::Integer(999_999u32.into()));
        assert!(matches!(check_document(name("one.example"), tampered, None, 2_000), Err(KeyDocumentError::NotSelfSigned(_))));
        // Signed by a key it does not list.
        let other = own_document(name("one.example"), &key("b2"), &[], 1_000, 60_000);
        let mut swapped = doc.clone();
        swapped.insert("signatures".into(), other.get("signatures").unwrap().clone());
        assert!(matches!(check_document(name("one.example"), swapped, None, 2_000), Err(KeyDocumentError::NotSelfSigned(_))));
        // Pinned key absent or different.
        let pinned: BTreeMap<String, Vec<u8>> = [("ed25519:a1".to_owned(), key("a1").public_key().to_vec())].into();
        assert_eq!(
            check_document(name("one.example"), doc.clone(), Some(&pinned), 2_000).unwrap_err(),
            KeyDocumentError::PinnedKeyMissing("ed25519:a1".into())
        );
        let pinned: BTreeMap<String, Vec<u8>> = [("ed25519:a1".to_owned(), k.public_key().to_vec())].into();
        assert!(check_document(name("one.example"), doc, Some(&pinned), 2_000).is_ok());
    }

    #[test]
    fn countersigned_documents_still_check() {
        let doc = own_document(name("one.example"), &key("a1"), &[], 1_000, 60_000);
        let notarised = countersign(name("notary.example"), &key("n1"), &doc);
        let CanonicalJsonValue::Object(sigs) = notarised.get("signatures").unwrap() else { panic!() };
        assert!(sigs.contains_key("notary.example") && sigs.contains_key("one.example"));
        assert!(check_document(name("one.example"), notarised, None, 2_000).is_ok());
    }

    #[test]
    fn a_full_cache_forgets_what_expires_first() {
        let mut cache = KeyCache::new(2);
        let doc = |ts| KnownKeys {
            verify_keys: BTreeMap::new(),
            old_verify_keys: BTreeMap::new(),
            valid_until_ts: ts,
            document: CanonicalJsonObject::new(),
        };
        cache.insert(name("a.org").to_owned(), std::sync::Arc::new(doc(5)));
        cache.insert(name("b.org").to_owned(), std::sync::Arc::new(doc(9)));
        cache.insert(name("c.org").to_owned(), std::sync::Arc::new(doc(7)));
        assert!(cache.get(name("a.org")).is_none());
        assert!(cache.get(name("b.org")).is_some() && cache.get(name("c.org")).is_some());
        cache.note_failure(name("d.org").to_owned(), 100);
        assert!(cache.recently_failed(name("d.org"), 99));
        assert!(!cache.recently_failed(name("d.org"), 100));
    }
}
