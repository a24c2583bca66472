//! End-to-end encryption, the server's part (client-server API "End-to-End
//! Encryption"): device keys, one-time and fallback keys, cross-signing
//! keys and the signatures users add to keys, the device-list stream, the
//! to-device inbox of every device, server-side key backups and dehydrated
//! devices (MSC3814). The server never sees plaintext: everything here is
//! JSON the clients built and signed, stored as the service canonicalised
//! it.
//!
//! Two streams of positions beside the events stream, with the same
//! promise as the others (everything at or below the current position is
//! visible):
//! - **device lists**: one row per user, moved to a new position whenever
//!   that user's devices or keys change (device keys uploaded, a device
//!   deleted, cross-signing keys replaced, a signature added to one of
//!   their keys). A sync asks which users it shares an encrypted room with
//!   changed in a range ([`KeyStore::device_list_updates`]).
//! - **to-device**: every queued message has its own position; a device's
//!   inbox is read in position order and deleted up to the position its
//!   client acknowledged.
//!
//! The [`AccountStore`](crate::AccountStore) calls that delete devices
//! (`delete_devices`, `delete_all_devices`, `change_password` with
//! logout, `deactivate_account`) delete the devices' keys, one-time and
//! fallback keys, inbox and to-device transaction ids in the same
//! transaction and move the user in the device-list stream; deactivation
//! also deletes the cross-signing keys, the signatures made by or on them,
//! the key backups and the dehydrated device.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::{NewDevice, StoreResult};

/// Bounds of one device's keys (see `proto::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Unclaimed one-time keys one device may hold (all algorithms).
    pub max_one_time_keys: usize,
}

/// One one-time or fallback key as uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeKey {
    /// `<algorithm>:<key id>`, as the client named it.
    pub key_id: String,
    /// The part of `key_id` before the colon.
    pub algorithm: String,
    /// The key: a JSON value serialized canonically (a string or a signed
    /// object).
    pub key: String,
}

/// What one `/keys/upload` (or a dehydrated device) stores, all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpload {
    /// The signed device keys, canonical JSON without `unsigned`. Stored
    /// once: the same bytes again change nothing, other bytes are
    /// `DeviceKeysChanged`.
    pub device_keys: Option<String>,
    /// Added to the device's unclaimed keys: an id already held with the
    /// same key changes nothing, with another key is `OneTimeKeyChanged`;
    /// more than `KeyLimits::max_one_time_keys` unclaimed is
    /// `TooManyOneTimeKeys`.
    pub one_time_keys: Vec<OneTimeKey>,
    /// Replace the device's fallback key of the same algorithm (used or
    /// not), unless it is the same key id with the same key, which keeps
    /// its `used` mark.
    pub fallback_keys: Vec<OneTimeKey>,
}

/// A device's keys as `/keys/query` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeysEntry {
    pub user_id: String,
    pub device_id: String,
    /// As stored (canonical JSON of the signed object).
    pub keys: String,
    /// The device's display name (from the devices table), for `unsigned`.
    pub display_name: Option<String>,
}

/// The three cross-signing keys of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CrossSigningKeyKind {
    Master,
    SelfSigning,
    UserSigning,
}

impl CrossSigningKeyKind {
    pub const ALL: [Self; 3] = [Self::Master, Self::SelfSigning, Self::UserSigning];

    /// The text the backends store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::SelfSigning => "self_signing",
            Self::UserSigning => "user_signing",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One cross-signing key of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossSigningKey {
    pub user_id: String,
    pub kind: CrossSigningKeyKind,
    /// The key's public part (unpadded base64), which signatures name as
    /// their target.
    pub public_key: String,
    /// The key object, canonical JSON, with the signatures it was
    /// uploaded with.
    pub key: String,
}

/// A signature a user added to a key after it was uploaded
/// (`/keys/signatures/upload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySignature {
    /// Whose key was signed.
    pub target_user_id: String,
    /// A device id, or the public part of a cross-signing key.
    pub target_key_id: String,
    pub signer_user_id: String,
    /// `ed25519:<key id>` of the signing key.
    pub signer_key_id: String,
    /// The signature, unpadded base64.
    pub signature: String,
}

/// One claim of `/keys/claim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    pub user_id: String,
    pub device_id: String,
    pub algorithm: String,
}

/// What a claim got: a one-time key (now deleted) or, when the device had
/// none of the algorithm left, its fallback key (now marked used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    pub user_id: String,
    pub device_id: String,
    pub key_id: String,
    pub key: String,
}

/// Users whose device lists a syncing user should fetch again, and those
/// they no longer share an encrypted room with (`device_lists` of
/// `/sync`, `/keys/changes`). Both sorted, without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceListUpdates {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

/// One message to queue. `device_id` `None` is `*`: every device the user
/// has when the message is queued (dehydrated one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceMessage {
    pub user_id: String,
    pub device_id: Option<String>,
    /// The content, a JSON object serialized.
    pub content: String,
}

/// What [`KeyStore::send_to_device`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToDeviceQueued {
    /// Messages now in inboxes.
    pub queued: usize,
    /// Messages not queued because their device's inbox was full.
    pub dropped_full: usize,
}

/// One message in a device's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceEvent {
    pub stream_pos: u64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

/// A read of a device's inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToDeviceInbox {
    /// Messages after the acknowledged position, in order.
    pub messages: Vec<ToDeviceEvent>,
    /// Messages at or below the acknowledged position are still stored
    /// (the caller deletes them with [`KeyStore::delete_to_device`]).
    pub acknowledged_waiting: bool,
}

/// What a syncing device needs of its own, read at once
/// ([`KeyStore::device_sync_state`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSyncState {
    pub inbox: ToDeviceInbox,
    pub one_time_key_counts: BTreeMap<String, u64>,
    pub unused_fallback_key_types: Vec<String>,
}

/// A key backup version (`/room_keys/version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersion {
    /// Decimal, increasing per user.
    pub version: String,
    pub algorithm: String,
    /// A JSON object serialized.
    pub auth_data: String,
    /// Changes every time the version's keys change.
    pub etag: String,
    /// Keys in the version.
    pub count: u64,
}

/// One backed-up room key session (`KeyBackupData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackedUpKey {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub is_verified: bool,
    /// The encrypted `session_data`, a JSON object serialized.
    pub session_data: String,
}

/// Which keys of a backup version a read or delete covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupScope<'a> {
    All,
    Room(&'a str),
    Session { room_id: &'a str, session_id: &'a str },
}

/// Bounds of a user's key backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupLimits {
    /// Keys one backup version holds at most.
    pub max_keys: u64,
    /// Versions a user holds at most (deleted ones not counted).
    pub max_versions: usize,
}

/// A user's dehydrated device (MSC3814).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DehydratedDevice {
    pub device_id: String,
    /// The client's opaque `device_data`, a JSON object serialized.
    pub device_data: String,
}

/// Whether `new` should replace `old` in a key backup (client-server API
/// "Server-side key backups", "Backup algorithm"... "the server should
/// keep the one that is verified, then the one with the lower
/// `first_message_index`, then the one with the lower
/// `forwarded_count`"). Shared by the backends, which call it inside the
/// write's transaction.
pub fn backed_up_key_is_better(new: &BackedUpKey, old: &BackedUpKey) -> bool {
    if new.is_verified != old.is_verified {
        return new.is_verified;
    }
    if new.first_message_index != old.first_message_index {
        return new.first_message_index < old.first_message_index;
    }
    new.forwarded_count < old.forwarded_count
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores what one device uploaded (see [`KeyUpload`] for the rules),
    /// all or nothing, and returns the device's unclaimed one-time keys
    /// counted by algorithm. New device keys move the user in the
    /// device-list stream. `UnknownDevice` if the device does not exist.
    async fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        upload: KeyUpload,
        limits: KeyLimits,
    ) -> StoreResult<BTreeMap<String, u64>>;

    /// The device's unclaimed one-time keys counted by algorithm, and the
    /// algorithms of its unused fallback keys (sorted), in one read.
    async fn key_counts(&self, user_id: &str, device_id: &str) -> StoreResult<(BTreeMap<String, u64>, Vec<String>)>;

    /// Device keys of the devices named (`devices` empty: all of the
    /// user's devices that have keys), sorted by user then device.
    async fn device_keys(&self, queries: &[(String, Vec<String>)]) -> StoreResult<Vec<DeviceKeysEntry>>;

    /// The cross-signing keys of these users.
    async fn cross_signing_keys(&self, user_ids: &[String]) -> StoreResult<Vec<CrossSigningKey>>;

    /// Signatures added to keys of these users, by anyone.
    async fn key_signatures(&self, target_user_ids: &[String]) -> StoreResult<Vec<KeySignature>>;

    /// Sets the user's cross-signing keys given (the others are kept) and
    /// moves the user in the device-list stream, in one transaction. A
    /// replaced key's signatures (those made on it, and by it) are deleted
    /// with it.
    async fn set_cross_signing_keys(&self, user_id: &str, keys: &[CrossSigningKey]) -> StoreResult<()>;

    /// Adds signatures (an existing one of the same target, signer and
    /// signing key is replaced) and moves every target user in the
    /// device-list stream, in one transaction.
    async fn add_key_signatures(&self, signatures: &[KeySignature]) -> StoreResult<()>;

    /// Hands out one key per claim, in one transaction: an unclaimed
    /// one-time key of the algorithm (deleted, so no two claims anywhere
    /// ever get the same one), else the device's fallback key of the
    /// algorithm (marked used, handed out again), else nothing.
    async fn claim_keys(&self, claims: &[KeyClaim]) -> StoreResult<Vec<ClaimedKey>>;

    /// What moved for `user_id` between two sync tokens: users sharing an
    /// encrypted room with them (joined, both) whose device list moved at
    /// a position in `device_lists.0 < p <= device_lists.1`, the user
    /// themselves included; and, when `events` is given, what membership
    /// changes at event positions in `events.0 < p <= events.1` did:
    /// members who joined an encrypted room the user is joined to, every
    /// member of an encrypted room the user joined or that became
    /// encrypted, are `changed`; members who left (or were kicked or
    /// banned from) such a room, and the members of an encrypted room the
    /// user left, are `left` if they no longer share any encrypted room
    /// with the user. A user in both lists is only `changed`.
    async fn device_list_updates(
        &self,
        user_id: &str,
        device_lists: (u64, u64),
        events: Option<(u64, u64)>,
    ) -> StoreResult<DeviceListUpdates>;

    /// Moves a user of another server to the next position of the
    /// device-list stream: their server said their devices changed, so the
    /// local users sharing a room with them are told to ask again.
    async fn note_remote_device_list_change(&self, user_id: &str) -> StoreResult<()>;

    /// Queues messages of one `/sendToDevice` request, all or nothing.
    /// `TransactionIdUsed` if the sender's device already used `txn_id`
    /// (nothing queued again); a device's newest
    /// `limits::MAX_TO_DEVICE_TXNS_PER_DEVICE` ids are remembered, older
    /// ones forgotten in the same transaction. Messages to users or devices that do not
    /// exist are left out; a message to an inbox holding `max_inbox`
    /// messages, or `limits::MAX_TO_DEVICE_FROM_ONE_SENDER` from this
    /// sender, is dropped (counted in `dropped_full`). Each
    /// message gets its own position in the to-device stream.
    async fn send_to_device(
        &self,
        sender_user_id: &str,
        sender_device_id: &str,
        txn_id: &str,
        event_type: &str,
        messages: &[ToDeviceMessage],
        max_inbox: usize,
    ) -> StoreResult<ToDeviceQueued>;

    /// The device's messages at positions `after < p <= up_to`, at most
    /// `limit`, in order, and whether any at or below `after` are left.
    async fn to_device_inbox(
        &self,
        user_id: &str,
        device_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<ToDeviceInbox>;

    /// What every sync of a device reads, in one go (one connection, one
    /// round trip): its inbox as [`KeyStore::to_device_inbox`] and its key
    /// counts as [`KeyStore::key_counts`].
    async fn device_sync_state(
        &self,
        user_id: &str,
        device_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<DeviceSyncState>;

    /// Deletes the device's messages at or below `up_to` (acknowledged).
    async fn delete_to_device(&self, user_id: &str, device_id: &str, up_to: u64) -> StoreResult<()>;

    /// Creates a backup version (the next number of the user's) and makes
    /// it the current one. `TooManyBackupVersions` past
    /// `limits.max_versions`.
    async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
        limits: BackupLimits,
    ) -> StoreResult<String>;

    /// A version (`None`: the current one, the highest not deleted).
    async fn backup_version(&self, user_id: &str, version: Option<&str>) -> StoreResult<Option<BackupVersion>>;

    /// Replaces a version's `auth_data`; false if it does not exist.
    /// `BackupAlgorithmMismatch` if `algorithm` is not the version's.
    async fn update_backup_version(&self, user_id: &str, version: &str, algorithm: &str, auth_data: &str) -> StoreResult<bool>;

    /// Deletes a version and its keys; false if it does not exist.
    async fn delete_backup_version(&self, user_id: &str, version: &str) -> StoreResult<bool>;

    /// Stores keys in the user's current version, each replacing the one
    /// held for its session only if [`backed_up_key_is_better`], and
    /// returns the version as it is afterwards (its etag moved if anything
    /// changed). `WrongBackupVersion(current)` if `version` is not the
    /// current one (`None` when there is none); `TooManyBackedUpKeys` if
    /// the version would hold more than `limits.max_keys`.
    async fn put_backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        keys: &[BackedUpKey],
        limits: BackupLimits,
    ) -> StoreResult<BackupVersion>;

    /// Keys of a version within the scope, sorted by room then session.
    /// `None` if the version does not exist.
    async fn backed_up_keys(&self, user_id: &str, version: &str, scope: BackupScope<'_>)
    -> StoreResult<Option<Vec<BackedUpKey>>>;

    /// Deletes the keys within the scope and returns the version as it is
    /// afterwards; `None` if the version does not exist.
    async fn delete_backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        scope: BackupScope<'_>,
    ) -> StoreResult<Option<BackupVersion>>;

    /// Replaces the user's dehydrated device, in one transaction: the old
    /// one (if any) is deleted with its keys and inbox, and `device` is
    /// created (a device with tokens no one holds), with `keys` uploaded as
    /// by [`KeyStore::upload_keys`] and `device_data`. `TooManyDevices`
    /// past `max_devices`; `DeviceIdTaken` if the user has a device of
    /// that id that is not their dehydrated device.
    async fn put_dehydrated_device(
        &self,
        device: NewDevice,
        device_data: &str,
        keys: KeyUpload,
        limits: KeyLimits,
        max_devices: usize,
    ) -> StoreResult<()>;

    async fn dehydrated_device(&self, user_id: &str) -> StoreResult<Option<DehydratedDevice>>;

    /// Deletes the user's dehydrated device as a device deletion would;
    /// returns its id, `None` if there was none.
    async fn delete_dehydrated_device(&self, user_id: &str) -> StoreResult<Option<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(verified: bool, index: u64, forwarded: u64) -> BackedUpKey {
        BackedUpKey {
            room_id: "!r:x".into(),
            session_id: "s".into(),
            first_message_index: index,
            forwarded_count: forwarded,
            is_verified: verified,
            session_data: "{}".into(),
        }
    }

    #[test]
    fn the_better_backed_up_key_wins() {
        // Verified first, then the lower index, then the fewer forwards.
        assert!(backed_up_key_is_better(&key(true, 9, 9), &key(false, 0, 0)));
        assert!(!backed_up_key_is_better(&key(false, 0, 0), &key(true, 9, 9)));
        assert!(backed_up_key_is_better(&key(false, 1, 9), &key(false, 2, 0)));
        assert!(!backed_up_key_is_better(&key(false, 3, 0), &key(false, 2, 9)));
        assert!(backed_up_key_is_better(&key(true, 2, 0), &key(true, 2, 1)));
        // An equal key changes nothing.
        assert!(!backed_up_key_is_better(&key(true, 2, 1), &key(true, 2, 1)));
    }

    #[test]
    fn cross_signing_kinds_round_trip() {
        for kind in CrossSigningKeyKind::ALL {
            assert_eq!(CrossSigningKeyKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(CrossSigningKeyKind::parse("other"), None);
    }
}
