//! Thread subscriptions (MSC4306): which threads a user follows, set by
//! the user ("manual") or by their client on their behalf ("automatic",
//! with the thread event that caused it), and unsubscriptions, which are
//! kept (a row with `subscribed = false`) so the change reaches the
//! user's other devices (MSC4308's sliding-sync extension and its
//! pagination endpoint).
//!
//! Every change gets a position in the thread-subscriptions stream, its
//! own stream beside the others (a sync token carries it). Positions
//! become visible in order: everything at or below
//! `StreamPositions::thread_subscriptions` is readable. A change replaces
//! the thread's row and moves it to the new position, so a range query
//! returns each thread once, with its latest state.
//!
//! Leaving or forgetting a room keeps the user's subscriptions there (as
//! Synapse); deactivating the account deletes them
//! (`AccountStore::deactivate_account`, in its transaction).

use async_trait::async_trait;

use crate::StoreResult;

/// One thread's subscription state for a user, as of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSubscriptionChange {
    pub room_id: String,
    pub thread_root_id: String,
    /// `false`: the user unsubscribed.
    pub subscribed: bool,
    /// Made by the client on the user's behalf (meaningless when
    /// `subscribed` is false).
    pub automatic: bool,
    /// Position of the last change in the thread-subscriptions stream.
    pub stream_pos: u64,
}

/// What [`ThreadSubscriptionStore::subscribe_to_thread`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// The subscription was written at this position.
    Subscribed(u64),
    /// The user already had a subscription that is good enough (a manual
    /// one, or any one for an automatic request): nothing written.
    Unchanged,
    /// An automatic subscription whose cause event is not after the
    /// user's unsubscription of the thread: the user already saw that
    /// event when they unsubscribed, so it is not written (MSC4306's
    /// conflict rule).
    ConflictsWithUnsubscription,
}

#[async_trait]
pub trait ThreadSubscriptionStore: Send + Sync {
    /// Subscribes the user to the thread of `thread_root_id` in `room_id`.
    /// `automatic_cause_pos` is `None` for a manual subscription, else the
    /// stream position of the thread event that made the client subscribe.
    ///
    /// - no row yet: written (manual or automatic);
    /// - subscribed manually, or automatically and this is automatic:
    ///   [`SubscribeOutcome::Unchanged`];
    /// - subscribed automatically and this is manual: becomes manual;
    /// - unsubscribed and this is automatic: written only if the cause is
    ///   after the room's newest event when the user unsubscribed, else
    ///   [`SubscribeOutcome::ConflictsWithUnsubscription`];
    /// - unsubscribed and this is manual: written.
    ///
    /// `TooManyThreadSubscriptions` (nothing written) if this would be a
    /// new row past `max_per_user` rows of the user (subscribed or not).
    async fn subscribe_to_thread(
        &self,
        user_id: &str,
        room_id: &str,
        thread_root_id: &str,
        automatic_cause_pos: Option<u64>,
        max_per_user: usize,
    ) -> StoreResult<SubscribeOutcome>;

    /// Unsubscribes the user, remembering the position of the room's
    /// newest event (for the conflict rule). Returns the new position, or
    /// `None` if the user was not subscribed (nothing written).
    async fn unsubscribe_from_thread(&self, user_id: &str, room_id: &str, thread_root_id: &str) -> StoreResult<Option<u64>>;

    /// The user's subscription to the thread: `Some(automatic)` if
    /// subscribed, `None` if not (never, or unsubscribed).
    async fn thread_subscription(&self, user_id: &str, room_id: &str, thread_root_id: &str) -> StoreResult<Option<bool>>;

    /// The users subscribed to the thread, sorted.
    async fn thread_subscribers(&self, room_id: &str, thread_root_id: &str) -> StoreResult<Vec<String>>;

    /// The user's newest changes at positions in `(after, up_to]`: at most
    /// `limit`, the ones nearest `up_to`, sorted by position (lowest
    /// first). When `limit` are returned, older ones may remain: the
    /// caller pages on with `up_to` below the first returned.
    async fn thread_subscription_changes(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<ThreadSubscriptionChange>>;
}

/// A thread's row as a subscribe reads it before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredThreadSubscription {
    pub subscribed: bool,
    pub automatic: bool,
    /// The room's newest event position when the user unsubscribed.
    pub unsubscribed_at_pos: Option<u64>,
}

/// What a subscribe does to the thread's row (the rules of
/// [`ThreadSubscriptionStore::subscribe_to_thread`]); the backends share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// Write the row at the next position.
    Write,
    Unchanged,
    Conflict,
}

/// The subscribe rules of MSC4306, as Synapse applies them: a manual
/// subscription wins over an automatic one; an automatic one never
/// undoes an unsubscription made after its cause event was seen.
pub fn decide_subscribe(current: Option<StoredThreadSubscription>, automatic_cause_pos: Option<u64>) -> SubscribeDecision {
    let Some(current) = current else { return SubscribeDecision::Write };
    if current.subscribed && (!current.automatic || automatic_cause_pos.is_some()) {
        return SubscribeDecision::Unchanged;
    }
    match (current.subscribed, automatic_cause_pos, current.unsubscribed_at_pos) {
        (false, Some(cause), Some(unsubscribed_at)) if cause <= unsubscribed_at => SubscribeDecision::Conflict,
        _ => SubscribeDecision::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_decisions_follow_msc4306() {
        let row = |subscribed, automatic, unsubscribed_at_pos| {
            Some(StoredThreadSubscription { subscribed, automatic, unsubscribed_at_pos })
        };
        use SubscribeDecision::*;
        let cases = [
            // (current row, automatic cause, decision)
            (None, None, Write),
            (None, Some(5), Write),
            (row(true, false, None), None, Unchanged),
            (row(true, false, None), Some(5), Unchanged),
            (row(true, true, None), Some(9), Unchanged),
            (row(true, true, None), None, Write),
            (row(false, false, Some(10)), None, Write),
            (row(false, false, Some(10)), Some(10), Conflict),
            (row(false, false, Some(10)), Some(3), Conflict),
            (row(false, false, Some(10)), Some(11), Write),
            (row(false, true, None), Some(1), Write),
        ];
        for (current, cause, want) in cases {
            assert_eq!(decide_subscribe(current, cause), want, "{current:?} {cause:?}");
        }
    }
}
