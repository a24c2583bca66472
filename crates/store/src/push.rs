//! Push rules and the notifications they produced.

use async_trait::async_trait;

use crate::{AccountDataLimits, StoreResult, StoredEvent};

/// A notification for one user, computed when the event was sent and
/// stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub user_id: String,
    /// The push actions as JSON (for `/notifications`).
    pub actions_json: String,
    pub highlight: bool,
}

/// One unread notification, for per-thread counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadedNotification {
    /// The thread root, `None` for the main timeline.
    pub thread_root: Option<String>,
    pub stream_pos: u64,
    pub highlight: bool,
}

#[derive(Debug, Clone)]
pub struct StoredNotification {
    pub event: StoredEvent,
    pub actions_json: String,
    pub highlight: bool,
}

#[async_trait]
pub trait PushStore: Send + Sync {
    /// The user's push rule set as JSON, if they ever changed it (else the
    /// server defaults apply).
    async fn push_rules(&self, user_id: &str) -> StoreResult<Option<String>>;

    /// Rule sets of many users at once (for evaluating an event for every
    /// member of a room): (user_id, ruleset JSON) for those who have one.
    async fn push_rules_of(&self, user_ids: &[String]) -> StoreResult<Vec<(String, String)>>;

    /// Every joined member of the room (by user id), with their rule set if
    /// they have one: what evaluating a message for the room needs, in one
    /// read.
    async fn joined_members_with_push_rules(&self, room_id: &str) -> StoreResult<Vec<(String, Option<String>)>>;

    /// Rule sets of the room's joined members who have one; costs what the
    /// number of users with rules of their own does, not the room's size.
    async fn push_rules_in_room(&self, room_id: &str) -> StoreResult<Vec<(String, String)>>;

    /// Stores the rule set as the user's `m.push_rules` global account data
    /// (`{"global": ...}`), so `/sync` delivers the change; returns its
    /// account-data position. It counts towards the account-data `limits`
    /// (errors as for `AccountDataStore::set_account_data`).
    async fn set_push_rules(&self, user_id: &str, ruleset_json: &str, limits: AccountDataLimits) -> StoreResult<u64>;

    /// The user's notifications, newest first, with positions below
    /// `before` (if given), at most `limit`.
    async fn notifications(
        &self,
        user_id: &str,
        before: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> StoreResult<Vec<StoredNotification>>;

    /// Where the user has read the room up to: the event stream position of
    /// their newest event, or of the event their `m.read`/`m.read.private`
    /// receipt (unthreaded or `main`) points at, whichever is later.
    async fn read_up_to(&self, room_id: &str, user_id: &str) -> StoreResult<u64>;

    /// The user's unread notifications of a room above `after`, oldest
    /// first, at most `limit`, each with the thread it belongs to (the root
    /// of its `m.thread` relation), for per-thread counts.
    async fn unread_notifications_by_thread(
        &self,
        user_id: &str,
        room_id: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<ThreadedNotification>>;

    /// Where the user's read receipts of a room point, per thread id
    /// (`""` unthreaded, `"main"`, or a thread root), as event stream
    /// positions; and the position of their own newest event there.
    async fn read_positions(&self, user_id: &str, room_id: &str) -> StoreResult<(Vec<(String, u64)>, u64)>;

    /// (notifications, highlights) of the user in a room at positions
    /// above `after` (the user's read position).
    async fn notification_counts(&self, user_id: &str, room_id: &str, after: u64) -> StoreResult<(u64, u64)>;

    /// Deletes the notifications of events stamped before `before_ts`
    /// (`origin_server_ts`, ms) of at most `max_users` users, those whose
    /// ids sort after `after_user`. Returns the rows deleted and the last
    /// user looked at; `None` when no user is left. Each user's rows go in
    /// one short write, so a pass over the server never holds the writer.
    async fn prune_notifications(
        &self,
        before_ts: u64,
        after_user: Option<&str>,
        max_users: usize,
    ) -> StoreResult<(u64, Option<String>)>;
}
