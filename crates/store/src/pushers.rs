//! Pushers (client-server API "Push Notifications", `/pushers`) and the
//! state of their delivery to push gateways.
//!
//! **The stored notifications are the queue.** A pusher does not get
//! rows of its own per notification: it keeps the position up to which
//! its user's notifications are done (`delivered_pos`: sent, or skipped
//! because read, redacted or too old) and the position of its user's
//! newest notification (`queued_pos`), which `RoomStore::append_event`
//! raises in the event's transaction for every notified user with a
//! pusher. So a pusher has work exactly while `queued_pos >
//! delivered_pos`, an index of those pushers finds them in time
//! proportional to their number, and whatever is undelivered at a crash
//! or restart is still there afterwards. Positions up to `queued_pos` are
//! committed (it is written with the notification at that position, and
//! positions commit in order), so moving `delivered_pos` up to a position
//! read never skips a notification committed later.
//!
//! **One node delivers a pusher at a time**: it holds the pusher's lease
//! (its node id and an expiry time, both passed in) from
//! [`PusherStore::claim_pusher`] until it releases it in
//! [`PusherStore::record_delivery`]; progress is written only while the
//! lease is held, and only after the gateway accepted (so nothing is lost,
//! and a crash between the gateway's answer and the write sends at most
//! that notification again).
//!
//! The `AccountStore` calls that delete devices delete the devices'
//! pushers in the same transaction, and deactivation every pusher of the
//! account.

use async_trait::async_trait;

use crate::{StoreResult, StoredNotification};

/// A pusher as the client set it (`POST /pushers/set`), checked by the
/// service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPusher {
    pub user_id: String,
    /// The device whose access token set it: the pusher goes with it.
    pub device_id: String,
    pub app_id: String,
    pub pushkey: String,
    /// `http` (the only kind this server delivers).
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The `data` object as the client sent it (`url` included), JSON.
    pub data_json: String,
    /// When it was set (ms): the `pushkey_ts` gateways are sent.
    pub now_ts: u64,
}

/// A stored pusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pusher {
    /// The store's id of this pusher; setting it again (same user, app id
    /// and pushkey) keeps it, deleting and setting it anew does not.
    pub id: u64,
    pub user_id: String,
    pub device_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data_json: String,
    /// When it was last set (ms).
    pub pushkey_ts: u64,
}

/// How far a pusher's delivery has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryProgress {
    /// The user's notifications at positions up to here are done (sent or
    /// skipped).
    pub delivered_pos: u64,
    /// Failed attempts in a row at the notification after `delivered_pos`.
    pub failures: u32,
    /// No attempt before this time (ms); 0 when not backing off.
    pub retry_at_ts: u64,
}

/// A pusher whose lease a node holds, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedPusher {
    pub pusher: Pusher,
    pub progress: DeliveryProgress,
    /// The position of the user's newest notification since the pusher
    /// was set (see the module documentation).
    pub queued_pos: u64,
}

/// A notification waiting in a pusher's queue.
#[derive(Debug, Clone)]
pub struct QueuedNotification {
    pub notification: StoredNotification,
    /// The user has read the room up to it (their newest own event or
    /// `m.read`/`m.read.private` receipt, unthreaded or `main`, is at or
    /// after it), so no push is needed any more.
    pub read: bool,
}

/// What a user's badge is counted from: rooms they are invited to, and
/// per joined room with unread notifications (after their read position,
/// as `/sync`'s `notification_count`), how many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadgeCounts {
    pub invites: u64,
    /// One count per joined room with at least one unread notification.
    pub unread_per_room: Vec<u64>,
}

/// Pushers due for delivery, as [`PusherStore::pushers_due`] finds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DuePushers {
    /// Ids of pushers with undelivered notifications whose backoff and
    /// lease (any node's) are over, the longest waiting first.
    pub due: Vec<u64>,
    /// The earliest time (ms) another pusher with undelivered
    /// notifications becomes due (its backoff or a lease ends), if any.
    pub next_due_ts: Option<u64>,
}

#[async_trait]
pub trait PusherStore: Send + Sync {
    /// The user's pushers, by app id then pushkey.
    async fn pushers(&self, user_id: &str) -> StoreResult<Vec<Pusher>>;

    /// Creates the user's pusher of (`app_id`, `pushkey`) or updates it
    /// (every field, and its device; failures and backoff are cleared, as
    /// the gateway may have changed; what is undelivered stays queued). A
    /// new pusher starts at the current stream position: it is not sent
    /// older notifications. Unless `append`, pushers of other users with
    /// the same app id and pushkey are deleted (spec: the pushkey moved to
    /// this user). `UnknownDevice` if the device does not exist (it is
    /// being deleted); `TooManyPushers` if a new pusher would give the
    /// user more than `max_per_user`.
    async fn set_pusher(&self, pusher: NewPusher, append: bool, max_per_user: usize) -> StoreResult<()>;

    /// Deletes the user's pusher of (`app_id`, `pushkey`); false if there
    /// was none.
    async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StoreResult<bool>;

    /// Deletes the pusher whose gateway rejected its pushkey, unless it was
    /// set again since (its `pushkey_ts` differs): false if it was not
    /// deleted.
    async fn delete_rejected_pusher(&self, id: u64, pushkey_ts: u64) -> StoreResult<bool>;

    /// Pushers with undelivered notifications whose backoff is over and
    /// whose lease is free or expired at `now_ts`, at most `limit`; and
    /// when the next one becomes due. Costs what the number of pushers
    /// with undelivered notifications does, not the number of pushers.
    async fn pushers_due(&self, now_ts: u64, limit: usize) -> StoreResult<DuePushers>;

    /// Takes the pusher's lease for `node` until `lease_until_ts` if it is
    /// free, expired at `now_ts`, or `node`'s already; returns the pusher
    /// and its delivery state. `None` if another node holds it or the
    /// pusher is gone.
    async fn claim_pusher(&self, id: u64, node: &str, now_ts: u64, lease_until_ts: u64) -> StoreResult<Option<ClaimedPusher>>;

    /// Writes the pusher's progress if `node` still holds its lease, and
    /// keeps the lease until `lease_until_ts` (0 releases it). Returns the
    /// pusher's current `queued_pos` (which appends may have moved since
    /// the claim); `None` if the lease was lost (expired and taken) or the
    /// pusher is gone, and then nothing was written.
    async fn record_delivery(
        &self,
        id: u64,
        node: &str,
        progress: DeliveryProgress,
        lease_until_ts: u64,
    ) -> StoreResult<Option<u64>>;

    /// The user's notifications at positions in `(after, up_to]`, oldest
    /// first, at most `limit`, each with whether the user has read it.
    /// Costs a probe per room the user has notifications in, plus the
    /// rows read.
    async fn queued_notifications(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<QueuedNotification>>;

    /// What the user's badge is counted from (see [`BadgeCounts`]). Costs
    /// a few probes per room the user has notifications in.
    async fn badge_counts(&self, user_id: &str) -> StoreResult<BadgeCounts>;
}
