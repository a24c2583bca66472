//! The keys component: the server's part of end-to-end encryption
//! (client-server API "End-to-End Encryption"). Device keys, one-time and
//! fallback keys (`/keys/upload`, `/keys/query`, `/keys/claim`), the
//! device-list changes a client tracks (`/keys/changes`, `device_lists` of
//! `/sync`), cross-signing keys and signatures, to-device messages
//! (`to_device.rs`), server-side key backups (`backup.rs`) and dehydrated
//! devices (`dehydrated.rs`, MSC3814). The server never sees plaintext:
//! it checks who owns each key and that its signatures verify
//! (`chancery_core::keys`), stores it in canonical JSON and hands it out.
//!
//! Keys of users on other servers are asked of their servers
//! (`remote.rs`); a server that cannot be reached is named in `failures`.
//! Changes of this server's users' devices and cross-signing keys, and
//! their to-device messages for other servers, go out through the
//! persisted federation outbox (`federation::edus`).

mod backup;
mod dehydrated;
pub mod device_lists;
mod remote;
mod sync;
mod to_device;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chancery_core::keys::{
    CheckedCrossSigningKey, KeyError, canonical_object, check_cross_signing_key, check_device_keys, check_one_time_key,
    same_apart_from_signatures, signatures_by, verify_signature,
};
use chancery_core::uia::{Operation, stage};
use chancery_proto::limits::{
    MAX_KEY_CLAIMS, MAX_KEY_QUERY_USERS, MAX_KEYS_PER_UPLOAD, MAX_ONE_TIME_KEYS_PER_DEVICE, MAX_SIGNATURE_UPLOADS,
};
use chancery_proto::ruma::{OwnedDeviceId, OwnedServerName, UserId};
use chancery_store::{
    AccountStore, CrossSigningKey, CrossSigningKeyKind, KeyClaim, KeyLimits, KeySignature, KeyStore, KeyUpload, OneTimeKey,
};
use serde_json::{Map, Value as JsonValue, json};

use crate::accounts::{AuthPayload, InteractiveAuth};
use crate::clock::Clock;
use crate::stream_token::StreamToken;
use crate::tokens::Entropy;
use crate::{AuthedUser, Error};
pub use backup::UploadedSession;
pub use chancery_store::BackupScope;
pub use dehydrated::NewDehydratedDevice;
pub use device_lists::DeviceLists;
pub use sync::{KeysSyncPart, MembershipNews};
pub use to_device::OutgoingToDevice;

pub(crate) const KEY_LIMITS: KeyLimits = KeyLimits { max_one_time_keys: MAX_ONE_TIME_KEYS_PER_DEVICE };

/// What [`Keys`] is built from, named where the server wires it.
pub struct KeysDeps {
    pub server_name: OwnedServerName,
    pub keys: Arc<dyn KeyStore>,
    pub accounts: Arc<dyn AccountStore>,
    /// Replacing cross-signing keys asks for the account password.
    pub uia: Arc<InteractiveAuth>,
    pub device_lists: Arc<DeviceLists>,
    /// Devices a user may hold (a dehydrated device counts).
    pub max_devices_per_user: usize,
    /// Creation times of dehydrated devices.
    pub clock: Arc<dyn Clock>,
    /// Tokens of dehydrated devices (which nobody holds).
    pub entropy: Arc<dyn Entropy>,
    /// Keys of other servers' users are asked of their servers.
    pub federation: Arc<crate::Federation>,
    /// To-device messages for other servers' users.
    pub edus: Arc<crate::federation::edus::EduSender>,
    /// Other servers' users' keys as their servers answered.
    pub remote_keys: Arc<dyn chancery_store::RemoteKeyCacheStore>,
    /// Whether another server's user is joined to a room here (their keys
    /// are then cached: their server announces changes).
    pub rooms: Arc<dyn chancery_store::RoomStore>,
}

/// Keys, device lists, to-device messages, key backups, dehydrated devices.
pub struct Keys {
    deps: KeysDeps,
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::TooLarge => Error::TooLarge(e.to_string()),
            KeyError::BadSignature(m) => Error::InvalidSignature(m),
            KeyError::Malformed(m) | KeyError::WrongOwner(m) => Error::InvalidParam(m),
            KeyError::UnknownAlgorithm(_) => Error::InvalidParam(e.to_string()),
        }
    }
}

/// A key stored as canonical JSON, as a JSON value again.
fn stored_json(text: &str) -> Result<JsonValue, Error> {
    serde_json::from_str(text).map_err(|e| Error::Internal(format!("stored key is not JSON: {e}")))
}

/// Adds signatures to a key object's `signatures`.
fn merge_signatures<'a>(object: &mut JsonValue, signatures: impl Iterator<Item = &'a KeySignature>) {
    for s in signatures {
        let Some(fields) = object.as_object_mut() else { return };
        let by_signer = fields.entry("signatures").or_insert_with(|| json!({}));
        if let Some(by_signer) = by_signer.as_object_mut() {
            let by_key = by_signer.entry(s.signer_user_id.clone()).or_insert_with(|| json!({}));
            if let Some(by_key) = by_key.as_object_mut() {
                by_key.insert(s.signer_key_id.clone(), JsonValue::String(s.signature.clone()));
            }
        }
    }
}

/// The keys a `/keys/query` may see of one user: signatures by the
/// user themselves, and by the requester (a user-signing key's signature
/// of someone's master key is the signer's private business: spec
/// "Cross-signing", only the signer sees it).
fn visible_signature(s: &KeySignature, requester: &str) -> bool {
    s.signer_user_id == s.target_user_id || s.signer_user_id == requester
}

impl Keys {
    pub fn new(deps: KeysDeps) -> Self {
        Self { deps }
    }

    fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.deps.server_name
    }

    /// `POST /keys/upload`: the device's identity keys (once), one-time and
    /// fallback keys, each checked; returns the unclaimed counts.
    pub async fn upload(
        &self,
        user: &AuthedUser,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String)],
        fallback_keys: &[(String, String)],
    ) -> Result<BTreeMap<String, u64>, Error> {
        let mut upload =
            self.checked_upload(user.user_id.as_str(), &user.device_id, device_keys, one_time_keys, fallback_keys).await?;
        if let Some(new) = &upload.device_keys {
            // The same identity again with more signatures (a client that set
            // up cross-signing while its first upload was in flight signs
            // its device keys and sends them again; Synapse takes it): the
            // stored keys stay, the signature comes through
            // `/keys/signatures/upload` as well. Other identity keys are
            // refused by the store.
            let stored = self.deps.keys.device_keys(&[(user.user_id.to_string(), vec![user.device_id.clone()])]).await?;
            if let Some(stored) = stored.first()
                && same_apart_from_signatures(&canonical_object(&stored.keys)?, &canonical_object(new)?)
            {
                upload.device_keys = None;
            }
        }
        let new_device_keys = upload.device_keys.is_some();
        let counts = self.deps.keys.upload_keys(user.user_id.as_str(), &user.device_id, upload, KEY_LIMITS).await?;
        if new_device_keys {
            self.deps.device_lists.changed(user.user_id.as_str()).await;
        }
        // As in `/sync`: zero is said, not left out.
        let mut counts = counts;
        counts.entry("signed_curve25519".into()).or_insert(0);
        Ok(counts)
    }

    /// Checks what a device uploads against its own keys (those uploaded
    /// with it, or stored), and puts it in canonical form.
    async fn checked_upload(
        &self,
        user_id: &str,
        device_id: &str,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String)],
        fallback_keys: &[(String, String)],
    ) -> Result<KeyUpload, Error> {
        if one_time_keys.len() + fallback_keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::InvalidParam(format!("at most {MAX_KEYS_PER_UPLOAD} one-time and fallback keys per upload")));
        }
        let device_keys = device_keys.map(|raw| check_device_keys(raw, user_id, device_id)).transpose()?;
        let ed25519 = match &device_keys {
            Some(keys) => Some(keys.ed25519.clone()),
            None if one_time_keys.is_empty() && fallback_keys.is_empty() => None,
            None => self.stored_device_ed25519(user_id, device_id).await?,
        };
        let check = |keys: &[(String, String)]| {
            keys.iter()
                .map(|(key_id, raw)| {
                    let checked = check_one_time_key(key_id, raw, user_id, device_id, ed25519.as_deref())?;
                    Ok(OneTimeKey { key_id: key_id.clone(), algorithm: checked.algorithm, key: checked.canonical })
                })
                .collect::<Result<Vec<_>, KeyError>>()
        };
        let (one_time_keys, fallback_keys) = (check(one_time_keys)?, check(fallback_keys)?);
        let mut algorithms = BTreeSet::new();
        if !fallback_keys.iter().all(|k| algorithms.insert(k.algorithm.as_str())) {
            return Err(Error::InvalidParam("at most one fallback key per algorithm".into()));
        }
        Ok(KeyUpload { device_keys: device_keys.map(|k| k.canonical), one_time_keys, fallback_keys })
    }

    /// The ed25519 key of a device's stored device keys.
    async fn stored_device_ed25519(&self, user_id: &str, device_id: &str) -> Result<Option<String>, Error> {
        let stored = self.deps.keys.device_keys(&[(user_id.to_owned(), vec![device_id.to_owned()])]).await?;
        device_ed25519_of(device_id, &stored)
    }

    /// `POST /keys/query`: device keys and cross-signing keys of the users
    /// named, with the signatures others added that the requester may see.
    pub async fn query(&self, user: &AuthedUser, wanted: BTreeMap<String, Vec<String>>) -> Result<JsonValue, Error> {
        if wanted.len() > MAX_KEY_QUERY_USERS {
            return Err(Error::InvalidParam(format!("at most {MAX_KEY_QUERY_USERS} users per query")));
        }
        let mut local: Vec<(String, Vec<String>)> = Vec::new();
        let mut remote: remote::ByServer<Vec<OwnedDeviceId>> = BTreeMap::new();
        for (user_id, devices) in wanted {
            let Ok(parsed) = UserId::parse(user_id.as_str()) else { continue };
            if self.is_local(&parsed) {
                local.push((user_id, devices));
            } else {
                let devices = devices.into_iter().map(OwnedDeviceId::from).collect();
                remote.entry(parsed.server_name().to_owned()).or_default().insert(parsed, devices);
            }
        }
        let mut answer = self.query_local(Some(user.user_id.as_str()), local).await?;
        self.query_remote(remote, &mut answer).await;
        Ok(answer)
    }

    /// Device and cross-signing keys of local users (`requester`: who
    /// asks, for the user-signing key and the signatures they may see;
    /// `None` for another server).
    pub(super) async fn query_local(
        &self,
        requester: Option<&str>,
        local: Vec<(String, Vec<String>)>,
    ) -> Result<JsonValue, Error> {
        let requester = requester.unwrap_or_default();
        let failures = Map::new();
        let users: Vec<String> = local.iter().map(|(u, _)| u.clone()).collect();
        let (devices, cross_signing, signatures) = tokio::try_join!(
            async { Ok::<_, Error>(self.deps.keys.device_keys(&local).await?) },
            async { Ok::<_, Error>(self.deps.keys.cross_signing_keys(&users).await?) },
            async { Ok::<_, Error>(self.deps.keys.key_signatures(&users).await?) },
        )?;
        let mut by_target: BTreeMap<(&str, &str), Vec<&KeySignature>> = BTreeMap::new();
        for s in signatures.iter().filter(|s| visible_signature(s, requester)) {
            by_target.entry((s.target_user_id.as_str(), s.target_key_id.as_str())).or_default().push(s);
        }
        let mut device_keys: BTreeMap<String, Map<String, JsonValue>> =
            local.iter().map(|(u, _)| (u.clone(), Map::new())).collect();
        for entry in devices {
            let mut keys = stored_json(&entry.keys)?;
            if let Some(extra) = by_target.get(&(entry.user_id.as_str(), entry.device_id.as_str())) {
                merge_signatures(&mut keys, extra.iter().copied());
            }
            if let Some(name) = &entry.display_name {
                keys["unsigned"] = json!({ "device_display_name": name });
            }
            device_keys.entry(entry.user_id.clone()).or_default().insert(entry.device_id.clone(), keys);
        }
        let (mut master, mut self_signing, mut user_signing) = (Map::new(), Map::new(), Map::new());
        for key in cross_signing {
            let mut object = stored_json(&key.key)?;
            if let Some(extra) = by_target.get(&(key.user_id.as_str(), key.public_key.as_str())) {
                merge_signatures(&mut object, extra.iter().copied());
            }
            match key.kind {
                CrossSigningKeyKind::Master => master.insert(key.user_id, object),
                CrossSigningKeyKind::SelfSigning => self_signing.insert(key.user_id, object),
                // Spec: only the user themselves gets their user-signing key.
                CrossSigningKeyKind::UserSigning if key.user_id == requester => user_signing.insert(key.user_id, object),
                CrossSigningKeyKind::UserSigning => None,
            };
        }
        Ok(json!({
            "device_keys": device_keys,
            "master_keys": master,
            "self_signing_keys": self_signing,
            "user_signing_keys": user_signing,
            "failures": failures,
        }))
    }

    /// `POST /keys/claim`: one key per (user, device, algorithm), each
    /// one-time key handed out once.
    pub async fn claim(&self, wanted: BTreeMap<String, BTreeMap<String, String>>) -> Result<JsonValue, Error> {
        let count: usize = wanted.values().map(BTreeMap::len).sum();
        if count > MAX_KEY_CLAIMS {
            return Err(Error::InvalidParam(format!("at most {MAX_KEY_CLAIMS} keys per claim")));
        }
        let mut claims = Vec::with_capacity(count);
        let mut remote: remote::ByServer<BTreeMap<OwnedDeviceId, String>> = BTreeMap::new();
        for (user_id, devices) in wanted {
            let Ok(parsed) = UserId::parse(user_id.as_str()) else { continue };
            if !self.is_local(&parsed) {
                let devices = devices.into_iter().map(|(d, a)| (OwnedDeviceId::from(d), a)).collect();
                remote.entry(parsed.server_name().to_owned()).or_default().insert(parsed, devices);
                continue;
            }
            for (device_id, algorithm) in devices {
                claims.push(KeyClaim { user_id: user_id.clone(), device_id, algorithm });
            }
        }
        let claimed = self.deps.keys.claim_keys(&claims).await?;
        let mut one_time_keys: BTreeMap<String, BTreeMap<String, Map<String, JsonValue>>> = BTreeMap::new();
        for key in claimed {
            one_time_keys
                .entry(key.user_id)
                .or_default()
                .entry(key.device_id)
                .or_default()
                .insert(key.key_id, stored_json(&key.key)?);
        }
        let mut answer = json!({ "one_time_keys": one_time_keys, "failures": {} });
        self.claim_remote(remote, &mut answer).await;
        Ok(answer)
    }

    /// `GET /keys/changes`: users whose device lists changed between two
    /// sync tokens, and those the user no longer shares an encrypted room
    /// with.
    pub async fn changes(&self, user: &AuthedUser, from: &str, to: &str) -> Result<JsonValue, Error> {
        let (from, to) = (StreamToken::parse(from)?, StreamToken::parse(to)?);
        let events = (from.events < to.events).then_some((from.events, to.events));
        let updates = self
            .deps
            .keys
            .device_list_updates(user.user_id.as_str(), (from.device_lists, to.device_lists.max(from.device_lists)), events)
            .await?;
        Ok(json!({ "changed": updates.changed, "left": updates.left }))
    }

    /// `POST /keys/device_signing/upload`: the user's cross-signing keys.
    /// The first upload needs no interactive auth (clients set up
    /// cross-signing right after registering; MSC3967), nor does an
    /// upload of the keys already stored; replacing keys asks for the
    /// password.
    pub async fn upload_signing_keys(
        &self,
        user: &AuthedUser,
        master: Option<&str>,
        self_signing: Option<&str>,
        user_signing: Option<&str>,
        auth: Option<AuthPayload>,
    ) -> Result<(), Error> {
        let user_id = user.user_id.as_str();
        let stored = self.deps.keys.cross_signing_keys(&[user_id.to_owned()]).await?;
        let stored_of = |kind| stored.iter().find(|k| k.kind == kind);
        let master = master.map(|raw| check_cross_signing_key(raw, user_id, "master")).transpose()?;
        let self_signing = self_signing.map(|raw| check_cross_signing_key(raw, user_id, "self_signing")).transpose()?;
        let user_signing = user_signing.map(|raw| check_cross_signing_key(raw, user_id, "user_signing")).transpose()?;
        // The master key that signs the others: the new one, or the stored.
        let signing_master = match (&master, stored_of(CrossSigningKeyKind::Master)) {
            (Some(new), _) => new.public_key.clone(),
            (None, Some(stored)) => stored.public_key.clone(),
            (None, None) if self_signing.is_some() || user_signing.is_some() => {
                return Err(Error::InvalidParam("upload a master key before the keys it signs".into()));
            }
            (None, None) => return Ok(()),
        };
        for key in self_signing.iter().chain(&user_signing) {
            verify_signature(&key.object, user_id, &format!("ed25519:{signing_master}"), &signing_master)?;
        }
        let given = [
            (CrossSigningKeyKind::Master, &master),
            (CrossSigningKeyKind::SelfSigning, &self_signing),
            (CrossSigningKeyKind::UserSigning, &user_signing),
        ];
        let unchanged = given.iter().all(|(kind, key)| {
            key.as_ref().is_none_or(|key| stored_of(*kind).is_some_and(|stored| stored.key == key.canonical()))
        });
        if unchanged {
            return Ok(());
        }
        let session = if stored_of(CrossSigningKeyKind::Master).is_some() {
            let flows = vec![vec![stage::PASSWORD]];
            Some(self.deps.uia.authorize(Operation::SigningKeys, Some(user_id), flows, auth).await?)
        } else {
            None
        };
        let keys: Vec<CrossSigningKey> =
            given.into_iter().filter_map(|(kind, key)| key.as_ref().map(|key| to_stored(user_id, kind, key))).collect();
        self.deps.keys.set_cross_signing_keys(user_id, &keys).await?;
        if let Some(session) = session {
            self.deps.uia.finish(&session).await;
        }
        // Other servers hear of the master and self-signing keys (spec
        // "m.signing_key_update"); the user-signing key is the user's own.
        let public = |key: &Option<CheckedCrossSigningKey>| key.as_ref().and_then(|k| serde_json::to_value(&k.object).ok());
        self.deps.device_lists.signing_keys_changed(user_id, public(&master), public(&self_signing)).await;
        Ok(())
    }

    /// `POST /keys/signatures/upload`: signatures the user made of their
    /// own devices (with their self-signing key), of their master key
    /// (with a device), or of another user's master key (with their
    /// user-signing key). Each key is judged on its own; what fails is
    /// listed in `failures` and the rest is stored.
    pub async fn upload_signatures(
        &self,
        user: &AuthedUser,
        signed: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<JsonValue, Error> {
        let count: usize = signed.values().map(BTreeMap::len).sum();
        if count > MAX_SIGNATURE_UPLOADS {
            return Err(Error::InvalidParam(format!("at most {MAX_SIGNATURE_UPLOADS} signed keys per upload")));
        }
        let signer = user.user_id.as_str();
        let targets: Vec<String> = signed.keys().cloned().collect();
        let mut users_keys = targets.clone();
        if !users_keys.iter().any(|u| u == signer) {
            users_keys.push(signer.to_owned());
        }
        let cross_signing = self.deps.keys.cross_signing_keys(&users_keys).await?;
        let own = |kind| cross_signing.iter().find(|k| k.user_id == signer && k.kind == kind);
        let mut failures: BTreeMap<String, Map<String, JsonValue>> = BTreeMap::new();
        let mut accepted = Vec::new();
        for (target_user, keys) in &signed {
            // All of them: a signature of the master key names the device
            // that made it only in its key id.
            let own_devices = if target_user == signer {
                self.deps.keys.device_keys(&[(signer.to_owned(), Vec::new())]).await?
            } else {
                Vec::new()
            };
            for (key_id, raw) in keys {
                let judged = self.judge_signature(signer, target_user, key_id, raw, &own_devices, &cross_signing, &own);
                match judged {
                    Ok(mut signatures) => accepted.append(&mut signatures),
                    Err(e) => {
                        let (errcode, message) = match &e {
                            Error::InvalidSignature(m) => ("M_INVALID_SIGNATURE", m.clone()),
                            Error::NotFound(m) => ("M_NOT_FOUND", m.clone()),
                            other => ("M_INVALID_PARAM", other.to_string()),
                        };
                        failures
                            .entry(target_user.clone())
                            .or_default()
                            .insert(key_id.clone(), json!({ "errcode": errcode, "error": message }));
                    }
                }
            }
        }
        if !accepted.is_empty() {
            self.deps.keys.add_key_signatures(&accepted).await?;
            let changed: BTreeSet<&str> = accepted.iter().map(|s| s.target_user_id.as_str()).collect();
            for user_id in changed {
                self.deps.device_lists.changed(user_id).await;
            }
        }
        Ok(json!({ "failures": failures }))
    }

    /// The signatures of one signed key of `/keys/signatures/upload` that
    /// verify, as stored rows; an error if none does or the key is not
    /// the one stored.
    #[allow(clippy::too_many_arguments)]
    fn judge_signature<'a>(
        &self,
        signer: &str,
        target_user: &str,
        key_id: &str,
        raw: &str,
        own_devices: &[chancery_store::DeviceKeysEntry],
        cross_signing: &'a [CrossSigningKey],
        own: &impl Fn(CrossSigningKeyKind) -> Option<&'a CrossSigningKey>,
    ) -> Result<Vec<KeySignature>, Error> {
        let object = canonical_object(raw)?;
        let row = |signer_key_id: String, signature: String| KeySignature {
            target_user_id: target_user.to_owned(),
            target_key_id: key_id.to_owned(),
            signer_user_id: signer.to_owned(),
            signer_key_id,
            signature,
        };
        let master_of = |user: &str| cross_signing.iter().find(|k| k.user_id == user && k.kind == CrossSigningKeyKind::Master);
        if target_user == signer {
            if let Some(device) = own_devices.iter().find(|d| d.device_id == key_id) {
                // One of the user's devices, signed with the self-signing key.
                let stored = canonical_object(&device.keys)?;
                if !same_apart_from_signatures(&stored, &object) {
                    return Err(Error::InvalidParam("the signed device keys differ from those uploaded".into()));
                }
                let ssk = own(CrossSigningKeyKind::SelfSigning)
                    .ok_or_else(|| Error::NotFound("upload a self-signing key first".into()))?;
                let ssk_id = format!("ed25519:{}", ssk.public_key);
                verify_signature(&object, signer, &ssk_id, &ssk.public_key)?;
                let signature = signatures_by(&object, signer).into_iter().find(|(id, _)| *id == ssk_id);
                return Ok(signature.into_iter().map(|(id, sig)| row(id, sig)).collect());
            }
            // The user's master key, signed by one of their devices.
            let master = master_of(signer)
                .filter(|m| m.public_key == key_id)
                .ok_or_else(|| Error::NotFound("no such device or key".into()))?;
            let stored = canonical_object(&master.key)?;
            if !same_apart_from_signatures(&stored, &object) {
                return Err(Error::InvalidParam("the signed master key differs from the one uploaded".into()));
            }
            let mut rows = Vec::new();
            for (signer_key_id, signature) in signatures_by(&object, signer) {
                let Some(device_id) = signer_key_id.strip_prefix("ed25519:") else { continue };
                if device_id == master.public_key {
                    continue; // the master key's own self-signature is part of it
                }
                let Some(device) = device_ed25519_of(device_id, own_devices)? else { continue };
                verify_signature(&object, signer, &signer_key_id, &device)?;
                rows.push(row(signer_key_id, signature));
            }
            if rows.is_empty() {
                return Err(Error::InvalidSignature("no signature of one of your devices verifies".into()));
            }
            return Ok(rows);
        }
        // Another user's master key, signed with the user-signing key.
        let master = master_of(target_user)
            .filter(|m| m.public_key == key_id)
            .ok_or_else(|| Error::NotFound("no such master key".into()))?;
        let stored = canonical_object(&master.key)?;
        if !same_apart_from_signatures(&stored, &object) {
            return Err(Error::InvalidParam("the signed master key differs from the one uploaded".into()));
        }
        let usk =
            own(CrossSigningKeyKind::UserSigning).ok_or_else(|| Error::NotFound("upload a user-signing key first".into()))?;
        let usk_id = format!("ed25519:{}", usk.public_key);
        verify_signature(&object, signer, &usk_id, &usk.public_key)?;
        let signature = signatures_by(&object, signer).into_iter().find(|(id, _)| *id == usk_id);
        Ok(signature.into_iter().map(|(id, sig)| row(id, sig)).collect())
    }
}

/// The ed25519 key of one of these devices' stored keys.
fn device_ed25519_of(device_id: &str, devices: &[chancery_store::DeviceKeysEntry]) -> Result<Option<String>, Error> {
    let Some(device) = devices.iter().find(|d| d.device_id == device_id) else { return Ok(None) };
    let keys = stored_json(&device.keys)?;
    Ok(keys["keys"][format!("ed25519:{device_id}")].as_str().map(str::to_owned))
}

fn to_stored(user_id: &str, kind: CrossSigningKeyKind, key: &CheckedCrossSigningKey) -> CrossSigningKey {
    CrossSigningKey { user_id: user_id.to_owned(), kind, public_key: key.public_key.clone(), key: key.canonical() }
}
