//! Storage as the domain sees it. Backends implement these traits; nothing
//! here knows SQL. Each method is one domain operation and one transaction:
//! after a crash either all of it is visible or none of it.
//!
//! Times are passed in as milliseconds since the Unix epoch (`*_ts`), so the
//! backends read no clock and tests control time.

mod account_data;
mod delayed_events;
mod directory;
mod federation;
mod forgotten;
mod hierarchy;
mod history;
mod keys;
mod leases;
mod media;
mod openid;
mod push;
mod pushers;
mod receipts;
mod relations;
mod remote_keys;
mod reports;
pub mod retry;
mod rooms;
mod search;
mod sliding_sync;
mod thread_subscriptions;
mod types;
mod user_data;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value as JsonValue;

pub use account_data::*;
pub use delayed_events::*;
pub use directory::*;
pub use federation::*;
pub use forgotten::*;
pub use hierarchy::*;
pub use history::*;
pub use keys::*;
pub use leases::*;
pub use media::*;
pub use openid::*;
pub use push::*;
pub use pushers::*;
pub use receipts::*;
pub use relations::*;
pub use remote_keys::*;
pub use reports::*;
pub use rooms::*;
pub use search::*;
pub use sliding_sync::*;
pub use thread_subscriptions::*;
pub use types::*;
pub use user_data::*;

/// What went wrong in a store call. Each variant names one domain
/// condition, so callers match them exhaustively and the service maps
/// each to its Matrix error in one place (`service::error`). `Contract` is
/// a caller breaking a method's documented contract (a bug, answered with
/// a 500); `Backend` is any other failure of the database. The database's
/// faults a client can wait out have variants of their own (`Conflict`,
/// `Unavailable`, `DiskFull`: ARCHITECTURE.md, "Faults"), so they are
/// answered 503 with `Retry-After`, not 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    // Taken ids and stale writes.
    #[error("this user id is taken")]
    UserIdTaken,
    #[error("this registration token exists")]
    RegistrationTokenExists,
    #[error("this interactive-auth session exists")]
    UiaSessionExists,
    #[error("this room id is taken")]
    RoomIdTaken,
    #[error("this event id is taken")]
    EventIdTaken,
    #[error("this room alias is taken")]
    AliasTaken,
    #[error("this media id is taken")]
    MediaIdTaken,
    /// The room's forward extremities are no longer those the event was
    /// built on: another writer went first.
    #[error("the room's forward extremities moved on")]
    StaleExtremities,
    /// The device already used this transaction id.
    #[error("this transaction id was used")]
    TransactionIdUsed,
    /// The user has a device of this id (not the one being replaced).
    #[error("this device id is taken")]
    DeviceIdTaken,
    /// The device's identity keys are stored and these differ.
    #[error("the device's keys are already uploaded with other content")]
    DeviceKeysChanged,
    /// A one-time key id is held with another key.
    #[error("a one-time key of this id is already uploaded with other content")]
    OneTimeKeyChanged,
    /// Keys were put into a backup version that is not the current one
    /// (the current one given, `None` when there is none).
    #[error("this backup version is not the current one")]
    WrongBackupVersion(Option<String>),
    /// A backup version's algorithm cannot change.
    #[error("the backup version's algorithm differs")]
    BackupAlgorithmMismatch,

    // Things that do not exist or can no longer be used.
    /// The account is deactivated or does not exist.
    #[error("the account is deactivated or does not exist")]
    AccountInactive,
    /// The registration token is unknown, revoked, expired or used up.
    #[error("the registration token cannot be used")]
    RegistrationTokenUnusable,
    #[error("no such room")]
    UnknownRoom,
    #[error("no such device")]
    UnknownDevice,
    /// No such media id, or a pending one that expired.
    #[error("no such media")]
    UnknownMedia,
    /// A pending media id's content comes from another user than its creator.
    #[error("this media id was created by another user")]
    NotMediaCreator,
    /// A media id's content was uploaded already.
    #[error("this media id already has content")]
    MediaAlreadyUploaded,
    /// An alias given with a room names another room.
    #[error("an alias names another room")]
    AliasOfAnotherRoom,
    /// Text the database cannot hold (PostgreSQL refuses NUL characters).
    #[error("text holds a character the database cannot store")]
    TextNotStorable,
    #[error("the message for other nodes is too large")]
    PayloadTooLarge,
    #[error("too many state keys in one read")]
    TooManyStateKeys,
    /// A sliding-sync position the connection does not have (never
    /// issued to this device, expired, or its connection restarted).
    #[error("no such sliding sync position")]
    UnknownPosition,

    // Quotas a user or a room reached.
    #[error("the account has too many devices")]
    TooManyDevices,
    #[error("the profile would be too large")]
    ProfileTooLarge,
    #[error("too many interactive-auth sessions are open")]
    TooManyUiaSessions,
    #[error("the account has too many filters")]
    TooManyFilters,
    #[error("the account has too many account data entries")]
    TooManyAccountData,
    #[error("the account data content is too large")]
    AccountDataTooLarge,
    /// All of the user's account data together would pass its byte quota.
    #[error("the account's account data would be too large in all")]
    AccountDataTotalTooLarge,
    #[error("too many threads hold a receipt")]
    TooManyReceiptThreads,
    #[error("the room has too many aliases")]
    TooManyAliases,
    #[error("too many reports in the window")]
    TooManyReports,
    #[error("too many history visibility spans")]
    TooManyVisibilitySpans,
    #[error("the device has too many one-time keys")]
    TooManyOneTimeKeys,
    #[error("the key backup has too many keys")]
    TooManyBackedUpKeys,
    #[error("the account has too many key backup versions")]
    TooManyBackupVersions,
    #[error("the account has too many pushers")]
    TooManyPushers,
    /// The uploader's media would pass their byte quota.
    #[error("the account's media would pass its quota")]
    MediaQuotaExceeded,
    /// The uploader holds as many pending media ids as allowed.
    #[error("the account has too many pending media uploads")]
    TooManyPendingMedia,
    /// The user has as many delayed events as they may; the earliest is
    /// due at `next_send_ts` (which frees a place).
    #[error("the account has too many delayed events")]
    TooManyDelayedEvents { next_send_ts: u64 },
    #[error("the account has too many thread subscriptions")]
    TooManyThreadSubscriptions,

    // Bugs and failures.
    /// A read ran past the database's time limit and was stopped.
    #[error("the query ran past its time limit")]
    QueryTimedOut,
    /// The caller broke the method's contract (events of another room, an
    /// empty batch): a bug, never client input.
    #[error("store contract broken: {0}")]
    Contract(&'static str),
    #[error("database schema version {found} is newer than this binary supports ({supported}); run a newer chancery")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("database error: {0}")]
    Backend(String),

    // Faults of the database that pass (ARCHITECTURE.md, "Faults").
    /// The database gave up the transaction because of a concurrent one (a
    /// deadlock, a serialization failure, a lock held too long) and rolled
    /// it back: running the operation again is safe ([`retry::conflicts`]).
    #[error("the database refused the transaction because of a concurrent one: {0}")]
    Conflict(String),
    /// The database cannot be reached, or is shutting down or starting
    /// (connection refused or lost, pool exhausted). Nothing may be
    /// assumed about a write whose connection was lost: it may have
    /// committed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database's disk is full: writes fail until space is freed;
    /// reads go on.
    #[error("the database's disk is full")]
    DiskFull,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Accounts, their devices and tokens, profiles, registration tokens and
/// interactive-auth sessions.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates an account, and with it the first device if one is given,
    /// consuming one use of `registration_token` if given — all or nothing.
    /// `UserIdTaken` if the id is taken (also by a deactivated account),
    /// `RegistrationTokenUnusable` if the token cannot be used any more.
    async fn create_account(
        &self,
        account: NewAccount,
        device: Option<NewDevice>,
        registration_token: Option<&str>,
        now_ts: u64,
    ) -> StoreResult<()>;

    async fn account(&self, user_id: &str) -> StoreResult<Option<Account>>;

    /// Adds a device or, if the user already has one with this id, gives it
    /// new tokens (invalidating the old ones) and, if given, a new name.
    /// `TooManyDevices` if the user would have more than
    /// `max_devices`. `AccountInactive` if the account is deactivated or
    /// missing.
    async fn upsert_device(&self, device: NewDevice, max_devices: usize) -> StoreResult<()>;

    /// The session an access token (by its hash) belongs to, expired or not.
    async fn session_by_access_token(&self, access_token_hash: &str) -> StoreResult<Option<Session>>;

    /// Spec `/refresh`: replaces the device's tokens if `refresh_token_hash`
    /// is its current refresh token, or its previous one while the new pair
    /// has not been used yet (so a client that lost the response can retry).
    async fn refresh_tokens(&self, refresh_token_hash: &str, new: &TokenPair) -> StoreResult<Option<Session>>;

    /// The device's new access token has been used: its previous refresh
    /// token stops working.
    async fn forget_previous_refresh_token(&self, user_id: &str, device_id: &str) -> StoreResult<()>;

    async fn devices(&self, user_id: &str) -> StoreResult<Vec<Device>>;
    async fn device(&self, user_id: &str, device_id: &str) -> StoreResult<Option<Device>>;

    /// Returns false if there is no such device.
    async fn set_device_display_name(&self, user_id: &str, device_id: &str, name: Option<&str>) -> StoreResult<bool>;

    /// Deletes these devices and their tokens (and what belongs to them:
    /// keys, inbox, pushers; see [`KeyStore`] and [`PusherStore`]); ids
    /// that do not exist are ignored, as the spec asks.
    async fn delete_devices(&self, user_id: &str, device_ids: &[String]) -> StoreResult<()>;

    /// Deletes every device of the user except `keep` (if given).
    async fn delete_all_devices(&self, user_id: &str, keep: Option<&str>) -> StoreResult<()>;

    /// Sets a new password hash and, if `logout_others`, deletes every device
    /// but `keep`, in one transaction.
    async fn change_password(
        &self,
        user_id: &str,
        password_hash: &str,
        logout_others: bool,
        keep: Option<&str>,
    ) -> StoreResult<()>;

    /// Deactivates the account for good: no password, no devices, no
    /// profile, no pushers. The user id stays taken so it can never be handed to
    /// someone else.
    async fn deactivate_account(&self, user_id: &str, now_ts: u64) -> StoreResult<()>;

    async fn profile(&self, user_id: &str) -> StoreResult<BTreeMap<String, JsonValue>>;

    /// Sets one profile field. `ProfileTooLarge` if the profile's
    /// serialized size would pass `max_profile_bytes`.
    async fn set_profile_field(&self, user_id: &str, key: &str, value: &JsonValue, max_profile_bytes: usize) -> StoreResult<()>;

    async fn delete_profile_field(&self, user_id: &str, key: &str) -> StoreResult<()>;

    /// `RegistrationTokenExists` if the token exists.
    async fn create_registration_token(&self, token: &RegistrationToken) -> StoreResult<()>;
    async fn registration_tokens(&self) -> StoreResult<Vec<RegistrationToken>>;
    async fn registration_token(&self, token: &str) -> StoreResult<Option<RegistrationToken>>;
    /// Returns false if there is no such token.
    async fn revoke_registration_token(&self, token: &str, now_ts: u64) -> StoreResult<bool>;

    /// Opens an interactive-auth session, first dropping expired ones (those
    /// created before `expire_before_ts`): for an operation of a logged-in
    /// user, that user's open session of the same operation if there is
    /// one (its newest), else `new`, stored. `TooManyUiaSessions` if
    /// `limits.max_sessions` are live, or `limits.max_per_user` of `new`'s
    /// user. Returns the session the caller continues.
    async fn open_uia_session(
        &self,
        new: &UiaSession,
        expire_before_ts: u64,
        limits: UiaSessionLimits,
    ) -> StoreResult<UiaSession>;
    async fn uia_session(&self, session_id: &str) -> StoreResult<Option<UiaSession>>;
    async fn update_uia_session(&self, session: &UiaSession) -> StoreResult<()>;
    async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()>;
}

/// The streams a sync reads, and how it hears of other nodes' commits.
#[async_trait]
pub trait StreamStore: Send + Sync {
    /// A counter that moves whenever any process sharing the database
    /// commits a change a sync may wait for (events, account data,
    /// receipts, device lists, to-device messages, thread subscriptions). `None` where only one process uses the database.
    fn remote_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// The committed positions of the streams a sync reads, in one round
    /// trip (each as its `current_*_pos`).
    async fn stream_positions(&self) -> StoreResult<StreamPositions>;
    /// The rooms with events at positions `events.0 < p <= events.1` or
    /// receipts at `receipts.0 < p <= receipts.1`; `None` if there are more
    /// than `limit` (the caller then looks at every room). Costs a scan of
    /// both ranges: callers bound them.
    async fn rooms_changed(&self, events: (u64, u64), receipts: (u64, u64), limit: usize) -> StoreResult<Option<Vec<String>>>;
}

/// Messages between the processes sharing a database, for the state each
/// keeps in memory (typing, presence). Nothing is stored.
#[async_trait]
pub trait NodeBus: Send + Sync {
    /// Sends `payload` (at most [`MAX_EPHEMERAL_PAYLOAD_BYTES`]) to every
    /// process sharing the database, this one included. A no-op where one
    /// process uses the database.
    async fn publish_ephemeral(&self, _payload: &str) -> StoreResult<()> {
        Ok(())
    }
    /// What the processes sharing the database publish, in order; `None`
    /// where only one process uses it. A receiver that falls behind loses
    /// the oldest messages.
    fn ephemeral_updates(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}

/// A whole backend.
#[async_trait]
pub trait Store:
    AccountStore
    + RoomStore
    + RelationStore
    + UserDataStore
    + SearchStore
    + PushStore
    + PusherStore
    + AccountDataStore
    + ReceiptStore
    + DirectoryStore
    + ReportStore
    + ForgottenRoomStore
    + KeyStore
    + SlidingSyncStore
    + HierarchyStore
    + MediaStore
    + DelayedEventStore
    + OpenIdStore
    + ThreadSubscriptionStore
    + FederationStore
    + RoomHistoryStore
    + JobLeaseStore
    + RemoteKeyCacheStore
    + StreamStore
    + NodeBus
{
    /// Cheap round trip to the database, for `/health`.
    async fn ping(&self) -> StoreResult<()>;
    /// Connection pool figures, for `/metrics`.
    fn pool_stats(&self) -> PoolStats;
    /// Finishes writes and closes connections; later calls fail.
    async fn close(&self);
    /// `sqlite` or `postgres`, for logs and metrics.
    fn kind(&self) -> &'static str;
    /// The backend calls `listener` for every event `append_event`
    /// commits, on the thread that committed it: right after the commit and
    /// before waking the caller, then runs what it returned right after
    /// waking the caller. So the listener decides which syncs run ahead of
    /// the sender's answer and which after it. Set once per store.
    ///
    /// The one place service code runs inside a backend (ARCHITECTURE.md,
    /// "Wake-ups at commit" says why it is not a channel).
    fn set_event_listener(&self, listener: EventListener);
}

/// Told of a committed event: its room, and for a membership event the
/// user it is about. Neither it nor what it returns may block (they run
/// on the writer's thread).
pub type EventListener = Arc<dyn Fn(&str, Option<&str>) -> Option<AfterCaller> + Send + Sync>;

/// What an [`EventListener`] leaves to run once the caller of
/// `append_event` is woken.
pub type AfterCaller = Box<dyn FnOnce() + Send>;

/// Largest payload of [`Store::publish_ephemeral`] (PostgreSQL's NOTIFY
/// takes less than 8,000 bytes).
pub const MAX_EPHEMERAL_PAYLOAD_BYTES: usize = 7_000;

/// What `Store::stream_positions` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamPositions {
    pub events: u64,
    pub account_data: u64,
    pub receipts: u64,
    /// See [`KeyStore`]: users whose devices or keys changed.
    pub device_lists: u64,
    /// See [`KeyStore`]: messages queued for devices.
    pub to_device: u64,
    /// See [`ThreadSubscriptionStore`]: users' thread subscriptions.
    pub thread_subscriptions: u64,
}

pub type DynStore = Arc<dyn Store>;

/// Size of a profile as the spec measures it: its JSON object serialized.
pub fn profile_size_bytes(profile: &BTreeMap<String, JsonValue>) -> usize {
    serde_json::to_vec(profile).map(|v| v.len()).unwrap_or(usize::MAX)
}
