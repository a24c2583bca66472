//! The decisions of push delivery, as a sans-I/O state machine: what a
//! pusher sends next, what a gateway's answer means, how long it backs
//! off, what a badge counts, which priority a push gets. Time and what
//! was read are passed in; the runtime (`delivery.rs`) does the reads,
//! writes and HTTP around them. Table-tested below without sleeping.
//!
//! A pusher's state is its [`DeliveryProgress`] (stored): the position
//! its user's notifications are done up to, the failures in a row at the
//! next one, and when it may try again. The next notification to push is
//! the oldest queued one that is still worth it: not read (the user read
//! the room on another device), not redacted, and not older than
//! `max_age_ms` (after a long outage the device gets recent messages, not
//! a day's backlog). A gateway that fails (unreachable, timeout, any
//! non-2xx status) makes the pusher back off exponentially, from
//! `initial_ms` doubling to `max_ms`; the notification stays queued and is
//! retried until it ages out. A 2xx whose `rejected` names the pushkey
//! removes the pusher (spec: "Homeservers must cease sending notification
//! requests for these pushkeys and remove the associated pushers").

use chancery_proto::ruma::api::push_gateway::send_event_notification::v1::NotificationPriority;
use chancery_proto::ruma::push::{Action, Tweak};
use chancery_store::{BadgeCounts, DeliveryProgress};
use serde::Deserialize;

/// How a pusher retries and which notifications are still worth pushing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial_ms: u64,
    /// The longest wait between attempts.
    pub max_ms: u64,
    /// Notifications older than this (their event's timestamp) are
    /// skipped.
    pub max_age_ms: u64,
}

/// The wait after `failures` failed attempts in a row (from 1):
/// `initial_ms · 2^(failures-1)`, at most `max_ms`.
pub fn retry_delay_ms(policy: &RetryPolicy, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(63);
    policy.initial_ms.saturating_mul(1u64 << doublings).min(policy.max_ms).max(1)
}

/// A queued notification as the decisions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub pos: u64,
    /// The event's `origin_server_ts` (ms).
    pub ts: u64,
    /// The user has read the room up to it.
    pub read: bool,
    pub redacted: bool,
}

impl Queued {
    fn worth_pushing(&self, policy: &RetryPolicy, now_ts: u64) -> bool {
        !self.read && !self.redacted && now_ts.saturating_sub(self.ts) <= policy.max_age_ms
    }
}

/// What a pusher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Backing off: nothing before `until_ts`.
    Wait { until_ts: u64 },
    /// Push `queue[index]` (those before it are not worth pushing; a
    /// success moves the position past them too).
    Send { index: usize },
    /// Nothing in the queue read is worth pushing: the position moves to
    /// `to_pos`, and the queue is read on from there.
    Advance { to_pos: u64 },
    /// Everything queued is done.
    Idle,
}

/// The next step of a pusher at `now_ts`, given the oldest queued
/// notifications after its position (`queue`, in position order) and the
/// position the queue read covers (`covered_up_to`: the queued position if
/// the read returned all there is, else the last position it returned).
pub fn next_step(policy: &RetryPolicy, progress: &DeliveryProgress, now_ts: u64, queue: &[Queued], covered_up_to: u64) -> Step {
    if progress.retry_at_ts > now_ts {
        return Step::Wait { until_ts: progress.retry_at_ts };
    }
    if let Some(index) = queue.iter().position(|q| q.pos > progress.delivered_pos && q.worth_pushing(policy, now_ts)) {
        return Step::Send { index };
    }
    if covered_up_to > progress.delivered_pos { Step::Advance { to_pos: covered_up_to } } else { Step::Idle }
}

/// A gateway's answer to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP answer: its status and (the start of) its body.
    Status { code: u16, body: Vec<u8> },
    /// No answer: the connection failed, the deadline passed, or the
    /// address is not allowed.
    Unreachable,
}

/// What a reply means for the pusher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The gateway took the push.
    Delivered,
    /// The gateway took it but rejected this pusher's pushkey: the pusher
    /// goes.
    Rejected,
    /// Try again later.
    Failed,
}

#[derive(Deserialize)]
struct GatewayAnswer {
    #[serde(default)]
    rejected: Vec<String>,
}

/// The meaning of `reply` to a push for `pushkey`. A 2xx is delivered
/// even if its body is not the JSON the spec describes (the gateway took
/// the push; only a `rejected` list it could read removes a pusher).
pub fn verdict(reply: &Reply, pushkey: &str) -> Verdict {
    match reply {
        Reply::Status { code, body } if (200..300).contains(code) => {
            let rejected = serde_json::from_slice::<GatewayAnswer>(body).map(|a| a.rejected).unwrap_or_default();
            if rejected.iter().any(|k| k == pushkey) { Verdict::Rejected } else { Verdict::Delivered }
        }
        Reply::Status { .. } | Reply::Unreachable => Verdict::Failed,
    }
}

/// What becomes of a pusher after pushing the notification at `sent_pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written, the lease kept: the position moved past `sent_pos`.
    Delivered(DeliveryProgress),
    /// Written, the lease released: back off.
    Backoff(DeliveryProgress),
    /// The pusher is deleted.
    Remove,
}

pub fn after_push(policy: &RetryPolicy, progress: &DeliveryProgress, now_ts: u64, sent_pos: u64, verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Delivered => Outcome::Delivered(DeliveryProgress { delivered_pos: sent_pos, failures: 0, retry_at_ts: 0 }),
        Verdict::Rejected => Outcome::Remove,
        Verdict::Failed => {
            let failures = progress.failures.saturating_add(1);
            Outcome::Backoff(DeliveryProgress {
                delivered_pos: progress.delivered_pos,
                failures,
                retry_at_ts: now_ts.saturating_add(retry_delay_ms(policy, failures)),
            })
        }
    }
}

/// A badge-only push (after a read receipt) changes nothing on the
/// gateway's side: its verdict only matters if it rejects the pushkey.
pub fn after_badge(verdict: Verdict) -> bool {
    verdict == Verdict::Rejected
}

/// The `counts.unread` of a push, as Synapse's `get_badge_count`: the
/// rooms the user is invited to, plus the joined rooms with unread
/// notifications (`by_room`, Synapse's default
/// `push.group_unread_count_by_room`) or their unread notifications.
pub fn badge(counts: &BadgeCounts, by_room: bool) -> u64 {
    let unread = if by_room { counts.unread_per_room.len() as u64 } else { counts.unread_per_room.iter().sum() };
    counts.invites.saturating_add(unread)
}

/// The tweaks a notification's push actions set (sent as the device's
/// `tweaks`).
pub fn tweaks(actions: &[Action]) -> Vec<Tweak> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetTweak(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// `prio` of a push, as Synapse decides: `high` for what alerts (a sound,
/// a highlight) and for encrypted events, whose rules the client
/// evaluates once decrypted and which may alert; `low` for the rest
/// (gateways deliver those in a battery-saving way).
pub fn priority(event_type: &str, actions: &[Action]) -> NotificationPriority {
    let alerts = actions.iter().any(|a| a.is_highlight() || a.sound().is_some());
    if alerts || event_type == "m.room.encrypted" { NotificationPriority::High } else { NotificationPriority::Low }
}

/// The badge counts a node last sent to each pusher (by id), so a read
/// receipt that does not change the count sends nothing. Bounded; a
/// forgotten pusher is sent its count again.
pub struct BadgeMemory(hashlink::LruCache<u64, u64>);

impl BadgeMemory {
    pub fn new(capacity: usize) -> Self {
        Self(hashlink::LruCache::new(capacity))
    }

    /// Whether the pusher should be sent `unread` (it was last sent
    /// another count, or none this node remembers).
    pub fn changed(&mut self, pusher: u64, unread: u64) -> bool {
        self.0.get(&pusher) != Some(&unread)
    }

    pub fn sent(&mut self, pusher: u64, unread: u64) {
        self.0.insert(pusher, unread);
    }

    pub fn forget(&mut self, pusher: u64) {
        self.0.remove(&pusher);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy { initial_ms: 1_000, max_ms: 3_600_000, max_age_ms: 86_400_000 };
    const NOW: u64 = 1_000_000_000;

    fn progress(delivered_pos: u64, failures: u32, retry_at_ts: u64) -> DeliveryProgress {
        DeliveryProgress { delivered_pos, failures, retry_at_ts }
    }

    fn fresh(pos: u64) -> Queued {
        Queued { pos, ts: NOW - 1_000, read: false, redacted: false }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let delays: Vec<u64> = [1, 2, 3, 4, 12, 13, 40, u32::MAX].iter().map(|f| retry_delay_ms(&POLICY, *f)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 2_048_000, 3_600_000, 3_600_000, 3_600_000]);
        let tiny = RetryPolicy { initial_ms: 0, ..POLICY };
        assert_eq!(retry_delay_ms(&tiny, 1), 1, "never a zero wait, which would spin");
    }

    #[test]
    fn next_step_table() {
        let old = Queued { ts: NOW - POLICY.max_age_ms - 1, ..fresh(7) };
        let cases: &[(&str, DeliveryProgress, &[Queued], u64, Step)] = &[
            ("nothing queued", progress(5, 0, 0), &[], 5, Step::Idle),
            ("a fresh one", progress(5, 0, 0), &[fresh(6)], 6, Step::Send { index: 0 }),
            ("backing off", progress(5, 2, NOW + 1), &[fresh(6)], 6, Step::Wait { until_ts: NOW + 1 }),
            ("backoff over", progress(5, 2, NOW), &[fresh(6)], 6, Step::Send { index: 0 }),
            ("read ones skipped", progress(5, 0, 0), &[Queued { read: true, ..fresh(6) }, fresh(8)], 8, Step::Send { index: 1 }),
            ("redacted skipped", progress(5, 0, 0), &[Queued { redacted: true, ..fresh(6) }], 9, Step::Advance { to_pos: 9 }),
            ("too old skipped", progress(5, 0, 0), &[old], 7, Step::Advance { to_pos: 7 }),
            (
                "exactly max age is pushed",
                progress(5, 0, 0),
                &[Queued { ts: NOW - POLICY.max_age_ms, ..fresh(6) }],
                6,
                Step::Send { index: 0 },
            ),
            ("all read, more to read", progress(5, 0, 0), &[Queued { read: true, ..fresh(6) }], 6, Step::Advance { to_pos: 6 }),
            ("behind what was read", progress(9, 0, 0), &[fresh(6)], 9, Step::Idle),
            (
                "a timestamp from the future is fresh",
                progress(0, 0, 0),
                &[Queued { ts: NOW + 5_000, ..fresh(1) }],
                1,
                Step::Send { index: 0 },
            ),
        ];
        for (name, progress, queue, covered, expected) in cases {
            assert_eq!(next_step(&POLICY, progress, NOW, queue, *covered), *expected, "{name}");
        }
    }

    #[test]
    fn replies_mean() {
        let ok = |body: &str| Reply::Status { code: 200, body: body.as_bytes().to_vec() };
        let cases: &[(&str, Reply, Verdict)] = &[
            ("accepted", ok(r#"{"rejected": []}"#), Verdict::Delivered),
            ("another key rejected", ok(r#"{"rejected": ["other"]}"#), Verdict::Delivered),
            ("ours rejected", ok(r#"{"rejected": ["other", "key"]}"#), Verdict::Rejected),
            ("empty object", ok("{}"), Verdict::Delivered),
            ("not JSON, still taken", ok("OK"), Verdict::Delivered),
            ("rejected of the wrong shape", ok(r#"{"rejected": "key"}"#), Verdict::Delivered),
            ("202", Reply::Status { code: 202, body: vec![] }, Verdict::Delivered),
            ("server error", Reply::Status { code: 500, body: br#"{"rejected": ["key"]}"#.to_vec() }, Verdict::Failed),
            ("not found", Reply::Status { code: 404, body: vec![] }, Verdict::Failed),
            ("too many", Reply::Status { code: 429, body: vec![] }, Verdict::Failed),
            ("redirect", Reply::Status { code: 302, body: vec![] }, Verdict::Failed),
            ("unreachable", Reply::Unreachable, Verdict::Failed),
        ];
        for (name, reply, expected) in cases {
            assert_eq!(verdict(reply, "key"), *expected, "{name}");
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            after_push(&POLICY, &progress(5, 3, 0), NOW, 9, Verdict::Delivered),
            Outcome::Delivered(progress(9, 0, 0)),
            "success clears the failures"
        );
        assert_eq!(after_push(&POLICY, &progress(5, 0, 0), NOW, 9, Verdict::Rejected), Outcome::Remove);
        assert_eq!(
            after_push(&POLICY, &progress(5, 0, 0), NOW, 9, Verdict::Failed),
            Outcome::Backoff(progress(5, 1, NOW + 1_000)),
            "the position stays"
        );
        assert_eq!(
            after_push(&POLICY, &progress(5, 3, 0), NOW, 9, Verdict::Failed),
            Outcome::Backoff(progress(5, 4, NOW + 8_000))
        );
        assert!(after_badge(Verdict::Rejected));
        assert!(!after_badge(Verdict::Failed) && !after_badge(Verdict::Delivered));
    }

    /// A gateway that fails three times then recovers, driven through
    /// the steps with time passed in: each retry comes exactly at its
    /// backoff, the notification is delivered once, then the pusher idles.
    #[test]
    fn a_failing_gateway_is_retried_with_backoff_until_it_recovers() {
        let queue = [fresh(6)];
        let mut state = progress(5, 0, 0);
        let mut now = NOW;
        let mut attempts = Vec::new();
        for answer in [Verdict::Failed, Verdict::Failed, Verdict::Failed, Verdict::Delivered] {
            let step = next_step(&POLICY, &state, now, &queue, 6);
            if let Step::Wait { until_ts } = step {
                assert_eq!(next_step(&POLICY, &state, until_ts - 1, &queue, 6), Step::Wait { until_ts }, "not a ms early");
                now = until_ts;
            }
            assert_eq!(next_step(&POLICY, &state, now, &queue, 6), Step::Send { index: 0 });
            attempts.push(now - NOW);
            state = match after_push(&POLICY, &state, now, 6, answer) {
                Outcome::Delivered(p) | Outcome::Backoff(p) => p,
                Outcome::Remove => unreachable!(),
            };
        }
        assert_eq!(attempts, [0, 1_000, 3_000, 7_000]);
        assert_eq!(next_step(&POLICY, &state, now, &[], 6), Step::Idle);
    }

    /// A notification still failing when it ages out is given up, and the
    /// pusher goes on with the next one without waiting out its backoff
    /// from scratch.
    #[test]
    fn a_notification_is_given_up_once_too_old() {
        let policy = RetryPolicy { max_age_ms: 10_000, ..POLICY };
        let first = Queued { ts: NOW, ..fresh(6) };
        let second = Queued { ts: NOW + 9_000, ..fresh(7) };
        let state = progress(5, 4, NOW + 11_000);
        assert_eq!(next_step(&policy, &state, NOW + 10_999, &[first, second], 7), Step::Wait { until_ts: NOW + 11_000 });
        assert_eq!(next_step(&policy, &state, NOW + 11_000, &[first, second], 7), Step::Send { index: 1 });
    }

    #[test]
    fn badges_count_rooms_or_notifications() {
        let counts = BadgeCounts { invites: 2, unread_per_room: vec![3, 1, 5] };
        assert_eq!(badge(&counts, true), 5);
        assert_eq!(badge(&counts, false), 11);
        assert_eq!(badge(&BadgeCounts::default(), true), 0);
    }

    #[test]
    fn priorities_and_tweaks() {
        let actions = |v: serde_json::Value| serde_json::from_value::<Vec<Action>>(v).unwrap();
        let sound = actions(json!(["notify", {"set_tweak": "sound", "value": "default"}]));
        let highlight = actions(json!(["notify", {"set_tweak": "highlight"}]));
        let silent = actions(json!(["notify"]));
        let no_highlight = actions(json!(["notify", {"set_tweak": "highlight", "value": false}]));
        let high = NotificationPriority::High;
        let low = NotificationPriority::Low;
        for (event_type, actions, expected) in [
            ("m.room.message", &sound, &high),
            ("m.room.message", &highlight, &high),
            ("m.room.message", &silent, &low),
            ("m.room.message", &no_highlight, &low),
            ("m.room.encrypted", &silent, &high),
            ("m.room.member", &silent, &low),
        ] {
            assert_eq!(priority(event_type, actions).as_str(), expected.as_str(), "{event_type} {actions:?}");
        }
        let json = |t: Vec<Tweak>| serde_json::to_value(t).unwrap();
        assert_eq!(json(tweaks(&sound)), json!([{"set_tweak": "sound", "value": "default"}]));
        assert_eq!(json(tweaks(&highlight)), json!([{"set_tweak": "highlight"}]));
        assert!(tweaks(&silent).is_empty());
    }

    #[test]
    fn badge_memory_sends_only_changes_and_is_bounded() {
        let mut memory = BadgeMemory::new(2);
        assert!(memory.changed(1, 0), "never sent");
        memory.sent(1, 3);
        assert!(!memory.changed(1, 3));
        assert!(memory.changed(1, 2));
        memory.sent(2, 0);
        memory.sent(3, 0);
        assert!(memory.changed(1, 3), "the least recently used was forgotten");
        memory.forget(3);
        assert!(memory.changed(3, 0));
    }
}
