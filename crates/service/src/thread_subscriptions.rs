//! The thread-subscriptions component (MSC4306, MSC4308): which threads a
//! user follows, so that replies in threads they follow notify them and
//! replies in others do not (the push rules of `push.rs`), and the
//! changes their devices sync (the sliding-sync extension and its
//! pagination endpoint).
//!
//! Off unless the operator turns it on (`experimental.thread_subscriptions`,
//! Synapse's `msc4306_enabled`): then its routes exist, `/versions`
//! advertises `org.matrix.msc4306` (what matrix-sdk looks for), the
//! sliding-sync extension answers, and the default push rules hold the
//! two thread-subscription rules. Without it nothing of this shows.
//!
//! A thread is named by its root, which must be an event of the room the
//! user may see (else 404, like an unknown one, as Synapse answers: the
//! MSC's "thread root not found"); like Synapse, the root does not have
//! to have replies yet, since a client subscribes as it starts a thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use chancery_proto::limits::{MAX_THREAD_SUBSCRIPTIONS_PAGE, MAX_THREAD_SUBSCRIPTIONS_PER_USER};
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::{RoomStore, StoredEvent, StreamStore, SubscribeOutcome, ThreadSubscriptionChange, ThreadSubscriptionStore};
use serde_json::{Map, Value as JsonValue, json};

use crate::notifier::Notifier;
use crate::rooms::Visibility;
use crate::{AuthedUser, Error};

/// What [`ThreadSubscriptions`] is built from.
pub struct ThreadSubscriptionsDeps {
    pub store: Arc<dyn ThreadSubscriptionStore>,
    /// The stream's current position (the newest end of a page).
    pub streams: Arc<dyn StreamStore>,
    /// Thread roots and the events that caused automatic subscriptions.
    pub rooms: Arc<dyn RoomStore>,
    pub visibility: Arc<Visibility>,
    /// A change wakes the user's syncs on this node (other nodes hear of
    /// the commit through the store).
    pub notifier: Arc<Notifier>,
    /// The operator's switch (`experimental.thread_subscriptions`).
    pub enabled: bool,
}

/// Thread subscriptions.
pub struct ThreadSubscriptions {
    deps: ThreadSubscriptionsDeps,
}

/// A position range of the stream a page covers: changes at positions in
/// `(after, up_to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBounds {
    pub after: u64,
    pub up_to: u64,
}

/// Parses a token of this stream: `ts{up_to}` (Synapse's form) or
/// `ts{up_to}_{after}` (ours, which also carries the lower end the client
/// had when the token was made, see [`page_token`]).
pub fn parse_token(token: &str) -> Option<(u64, Option<u64>)> {
    let rest = token.strip_prefix("ts")?;
    let digits = |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten();
    match rest.split_once('_') {
        None => Some((digits(rest)?, None)),
        Some((up_to, after)) => Some((digits(up_to)?, Some(digits(after)?))),
    }
}

/// Whether `token` has the shape of a sliding-sync `pos`
/// (`{connection}_{position}`).
fn is_sliding_pos(token: &str) -> bool {
    token.split_once('_').is_some_and(|(a, b)| [a, b].iter().all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())))
}

/// The token of the rest of a truncated page: the changes below the
/// oldest one sent, down to `after`. It carries `after` so that a client
/// that names the range's lower end with its sliding-sync `pos` (as
/// matrix-sdk does: `to` is the `pos` of the request that got
/// `prev_batch`) gets exactly the range it missed: a `pos` does not say
/// which thread-subscription position it stood at once the connection
/// moved on.
pub fn page_token(oldest_sent: u64, after: u64) -> String {
    format!("ts{}_{after}", oldest_sent.saturating_sub(1))
}

/// The bounds a page request names. `from` is the newest end (default:
/// `current`), `to` the oldest (exclusive; default: the start of the
/// stream): a token of this stream, or a sliding-sync `pos`, which stands
/// for the lower end carried by `from` (or the start of the stream).
pub fn page_bounds(from: Option<&str>, to: Option<&str>, current: u64) -> Result<PageBounds, Error> {
    let (up_to, carried_after) = match from {
        None => (current, None),
        Some(from) => parse_token(from).ok_or_else(|| Error::InvalidParam("`from` is not a valid token".into()))?,
    };
    let after = match to {
        None => 0,
        Some(to) => match parse_token(to) {
            Some((after, _)) => after,
            None if is_sliding_pos(to) => carried_after.unwrap_or(0),
            None => return Err(Error::InvalidParam("`to` is not a valid token".into())),
        },
    };
    Ok(PageBounds { after, up_to: up_to.min(current) })
}

/// The `subscribed` and `unsubscribed` maps of a page or an extension
/// answer (the MSC's shape: room, then thread root, then the change with
/// its position as `bump_stamp`), empty ones left out.
pub fn changes_body(changes: &[ThreadSubscriptionChange]) -> Map<String, JsonValue> {
    let mut subscribed: BTreeMap<&str, Map<String, JsonValue>> = BTreeMap::new();
    let mut unsubscribed: BTreeMap<&str, Map<String, JsonValue>> = BTreeMap::new();
    for change in changes {
        if change.subscribed {
            subscribed
                .entry(&change.room_id)
                .or_default()
                .insert(change.thread_root_id.clone(), json!({ "automatic": change.automatic, "bump_stamp": change.stream_pos }));
        } else {
            unsubscribed
                .entry(&change.room_id)
                .or_default()
                .insert(change.thread_root_id.clone(), json!({ "bump_stamp": change.stream_pos }));
        }
    }
    let mut body = Map::new();
    if !subscribed.is_empty() {
        body.insert("subscribed".into(), json!(subscribed));
    }
    if !unsubscribed.is_empty() {
        body.insert("unsubscribed".into(), json!(unsubscribed));
    }
    body
}

/// The root's relation that makes `event` a reply in its thread.
fn is_in_thread(event: &StoredEvent, root: &EventId) -> bool {
    let Ok(json) = serde_json::from_str::<JsonValue>(&event.json) else { return false };
    let relation = &json["content"]["m.relates_to"];
    relation["rel_type"] == "m.thread" && relation["event_id"] == root.as_str()
}

/// The page size a client asked for, within the bounds.
pub fn page_limit(limit: Option<u64>, default: usize) -> Result<usize, Error> {
    match limit {
        None => Ok(default),
        Some(0) => Err(Error::InvalidParam("limit must be greater than 0".into())),
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(MAX_THREAD_SUBSCRIPTIONS_PAGE)),
    }
}

impl ThreadSubscriptions {
    pub fn new(deps: ThreadSubscriptionsDeps) -> Self {
        Self { deps }
    }

    /// Whether the operator turned thread subscriptions on.
    pub fn enabled(&self) -> bool {
        self.deps.enabled
    }

    /// The event `event_id` of `room_id` if the user may see it; otherwise
    /// `M_NOT_FOUND`, as for an event that does not exist (Synapse answers
    /// a room the user is not in the same way).
    async fn visible_event(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_id: &EventId,
        what: &str,
    ) -> Result<StoredEvent, Error> {
        let not_found = || Error::NotFound(format!("no such {what}"));
        match self.deps.visibility.ensure_can_read(room_id, &user.user_id).await {
            Ok(()) => {}
            Err(Error::Forbidden(_)) => return Err(not_found()),
            Err(e) => return Err(e),
        }
        let event = self.deps.rooms.event(event_id.as_str()).await?.filter(|e| e.room_id == room_id.as_str());
        let event = event.ok_or_else(not_found)?;
        match self.deps.visibility.visible_event(&user.user_id, event).await {
            Err(Error::NotFound(_)) => Err(not_found()),
            other => other,
        }
    }

    /// `GET .../thread/{threadRootId}/subscription`: `Some(automatic)`, or
    /// `M_NOT_FOUND` when the user is not subscribed.
    pub async fn subscription(&self, user: &AuthedUser, room_id: &RoomId, root: &EventId) -> Result<bool, Error> {
        self.visible_event(user, room_id, root, "thread root").await?;
        let automatic = self.deps.store.thread_subscription(user.user_id.as_str(), room_id.as_str(), root.as_str()).await?;
        automatic.ok_or_else(|| Error::NotFound("not subscribed to this thread".into()))
    }

    /// `PUT .../thread/{threadRootId}/subscription`. `automatic` names the
    /// thread event that made the client subscribe on the user's behalf
    /// (it must be a reply in this thread the user may see: 400
    /// `M_NOT_IN_THREAD`, 404). An automatic subscription older than the
    /// user's unsubscription is refused (409 `M_CONFLICTING_UNSUBSCRIPTION`).
    pub async fn subscribe(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        root: &EventId,
        automatic: Option<&EventId>,
    ) -> Result<(), Error> {
        self.visible_event(user, room_id, root, "thread root").await?;
        let cause_pos = match automatic {
            None => None,
            Some(cause) => {
                let event = self.visible_event(user, room_id, cause, "event causing the automatic subscription").await?;
                if !is_in_thread(&event, root) {
                    return Err(Error::NotInThread("an automatic subscription must name an event of the thread".into()));
                }
                Some(event.stream_pos)
            }
        };
        let user_id = user.user_id.as_str();
        let outcome = self
            .deps
            .store
            .subscribe_to_thread(user_id, room_id.as_str(), root.as_str(), cause_pos, MAX_THREAD_SUBSCRIPTIONS_PER_USER)
            .await?;
        match outcome {
            SubscribeOutcome::Subscribed(_) => self.deps.notifier.user(user_id),
            SubscribeOutcome::Unchanged => {}
            SubscribeOutcome::ConflictsWithUnsubscription => return Err(Error::ConflictingUnsubscription),
        }
        Ok(())
    }

    /// `DELETE .../thread/{threadRootId}/subscription` (succeeds when the
    /// user was not subscribed, as Synapse).
    pub async fn unsubscribe(&self, user: &AuthedUser, room_id: &RoomId, root: &EventId) -> Result<(), Error> {
        self.visible_event(user, room_id, root, "thread root").await?;
        let user_id = user.user_id.as_str();
        if self.deps.store.unsubscribe_from_thread(user_id, room_id.as_str(), root.as_str()).await?.is_some() {
            self.deps.notifier.user(user_id);
        }
        Ok(())
    }

    /// `GET /unstable/io.element.msc4308/thread_subscriptions` (`dir=b`):
    /// the newest `limit` changes of the range, with `end` when older ones
    /// may remain. Both maps are always there, empty or not: ruma (so
    /// matrix-sdk 0.18) cannot read an answer without them, although
    /// Synapse leaves empty ones out.
    pub async fn page(&self, user: &AuthedUser, from: Option<&str>, to: Option<&str>, limit: usize) -> Result<JsonValue, Error> {
        let current = self.deps.streams.stream_positions().await?.thread_subscriptions;
        let bounds = page_bounds(from, to, current)?;
        let (body, rest) = self.changes(user.user_id.as_str(), bounds, limit).await?;
        let mut body = body;
        for key in ["subscribed", "unsubscribed"] {
            body.entry(key).or_insert_with(|| json!({}));
        }
        if let Some(rest) = rest {
            body.insert("end".into(), json!(rest));
        }
        Ok(JsonValue::Object(body))
    }

    /// The user's changes in `bounds` (the newest `limit`), as the body of
    /// a page or an extension, and the token of the rest when `limit` were
    /// found (Synapse's rule: there may be more).
    pub(crate) async fn changes(
        &self,
        user_id: &str,
        bounds: PageBounds,
        limit: usize,
    ) -> Result<(Map<String, JsonValue>, Option<String>), Error> {
        if limit == 0 || bounds.after >= bounds.up_to {
            return Ok((Map::new(), None));
        }
        let changes = self.deps.store.thread_subscription_changes(user_id, bounds.after, bounds.up_to, limit).await?;
        let rest = (changes.len() == limit).then(|| page_token(changes[0].stream_pos, bounds.after));
        Ok((changes_body(&changes), rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_in_both_forms() {
        assert_eq!(parse_token("ts12"), Some((12, None)));
        assert_eq!(parse_token("ts12_3"), Some((12, Some(3))));
        assert_eq!(parse_token(&page_token(13, 3)), Some((12, Some(3))));
        assert_eq!(parse_token(&page_token(0, 0)), Some((0, Some(0))));
        for bad in ["", "ts", "t12", "12", "ts-1", "ts1_", "ts_1", "ts1_2_3", "ts1x", "ts99999999999999999999999"] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn page_bounds_follow_from_and_to() {
        let b = |after, up_to| Some(PageBounds { after, up_to });
        let cases = [
            (None, None, b(0, 50)),
            (Some("ts20"), None, b(0, 20)),
            (Some("ts20"), Some("ts5"), b(5, 20)),
            // A sliding-sync pos stands for the lower end `from` carries.
            (Some("ts20_7"), Some("3_41"), b(7, 20)),
            (Some("ts20"), Some("3_41"), b(0, 20)),
            // A `to` token of this stream wins over the carried end.
            (Some("ts20_7"), Some("ts9"), b(9, 20)),
            // Never past what is visible.
            (Some("ts90"), None, b(0, 50)),
            // Malformed: `M_INVALID_PARAM`.
            (Some("nope"), None, None),
            (None, Some("s1_2_3"), None),
        ];
        for (from, to, want) in cases {
            let got = page_bounds(from, to, 50).map_err(|e| assert!(matches!(e, Error::InvalidParam(_)))).ok();
            assert_eq!(got, want, "{from:?} {to:?}");
        }
    }

    #[test]
    fn page_limits_are_bounded() {
        assert_eq!(page_limit(None, 100).unwrap(), 100);
        assert_eq!(page_limit(Some(7), 100).unwrap(), 7);
        assert_eq!(page_limit(Some(100_000), 100).unwrap(), MAX_THREAD_SUBSCRIPTIONS_PAGE);
        assert!(matches!(page_limit(Some(0), 100), Err(Error::InvalidParam(_))));
    }

    #[test]
    fn changes_are_grouped_by_room_and_kind() {
        let change = |room: &str, root: &str, subscribed, automatic, pos| ThreadSubscriptionChange {
            room_id: room.into(),
            thread_root_id: root.into(),
            subscribed,
            automatic,
            stream_pos: pos,
        };
        let body = changes_body(&[
            change("!a:x", "$1", true, false, 1),
            change("!a:x", "$2", false, false, 2),
            change("!b:x", "$3", true, true, 3),
        ]);
        assert_eq!(
            JsonValue::Object(body),
            json!({
                "subscribed": {
                    "!a:x": {"$1": {"automatic": false, "bump_stamp": 1}},
                    "!b:x": {"$3": {"automatic": true, "bump_stamp": 3}},
                },
                "unsubscribed": {"!a:x": {"$2": {"bump_stamp": 2}}},
            })
        );
        assert!(changes_body(&[]).is_empty());
    }
}
