//! The decisions of delayed events, as pure functions of what was read
//! and the time: whether a delay is allowed, when an event is due, how
//! long the firing task sleeps, what a full quota tells the client.

use std::time::Duration;

use crate::Error;

/// How long a claim on an event being sent lasts: if its node dies while
/// sending, another node (or the same one after a restart) takes it again
/// this long after. A send takes milliseconds; this is far past it.
pub const CLAIM_LEASE_MS: u64 = 30_000;

/// The longest the firing task sleeps without looking at the store: what
/// another node scheduled (the task is only woken by its own node) or a
/// claim another node left fires within this.
pub const MAX_IDLE_MS: u64 = 30_000;

/// Events claimed and sent in one round of the firing task.
pub const FIRE_BATCH: usize = 64;

/// The management actions of MSC4140.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Due again after its whole delay, from now.
    Restart,
    /// Never sent.
    Cancel,
    /// Sent now.
    Send,
}

impl Action {
    /// The action named in a path or in `{"action": ...}`.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "restart" => Ok(Self::Restart),
            "cancel" => Ok(Self::Cancel),
            "send" => Ok(Self::Send),
            _ => Err(Error::InvalidParam("'action' is not one of 'cancel', 'restart', 'send'".into())),
        }
    }
}

/// Why a delay is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayRefusal {
    /// Zero: MSC4140 asks for a positive delay.
    NotPositive,
    /// Past the configured maximum (`M_MAX_DELAY_EXCEEDED`).
    TooLong { max_delay_ms: u64 },
}

/// When an event scheduled (or restarted) at `now_ms` with `delay_ms` is
/// due, unless the delay is refused.
pub fn due_ts(now_ms: u64, delay_ms: u64, max_delay_ms: u64) -> Result<u64, DelayRefusal> {
    if delay_ms == 0 {
        return Err(DelayRefusal::NotPositive);
    }
    if delay_ms > max_delay_ms {
        return Err(DelayRefusal::TooLong { max_delay_ms });
    }
    Ok(now_ms.saturating_add(delay_ms))
}

/// How long the firing task sleeps when the next event (of any node) is
/// due at `next_ts`: until then, at most [`MAX_IDLE_MS`], not at all for
/// one already due.
pub fn sleep_for(now_ms: u64, next_ts: Option<u64>) -> Duration {
    let ms = match next_ts {
        Some(ts) => ts.saturating_sub(now_ms).min(MAX_IDLE_MS),
        None => MAX_IDLE_MS,
    };
    Duration::from_millis(ms)
}

/// What a user with a full quota is told to wait: until their earliest
/// event is due (which frees a place), at least a second (MSC4140: the
/// time until the next of the user's events is sent, rounded up).
pub fn quota_retry_after_ms(now_ms: u64, earliest_send_ts: u64) -> u64 {
    earliest_send_ts.saturating_sub(now_ms).max(1_000)
}

/// What the listing shows of a scheduled event: when it was scheduled or
/// last restarted (`running_since`, MSC4140), which with `delay` tells the
/// client how long it has left.
pub fn running_since(send_ts: u64, delay_ms: u64) -> u64 {
    send_ts.saturating_sub(delay_ms)
}

/// When an event whose send failed for a passing reason (the room busy
/// with another node's append, the database briefly unavailable) is tried
/// again: after what the failure asks, within 100 ms to 5 s, not the claim
/// lease's 30 s (a call member's leave must not hang that long).
pub fn retry_send_at(now_ms: u64, retry_after_ms: u64) -> u64 {
    now_ms.saturating_add(retry_after_ms.clamp(100, 5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_failures_are_retried_soon() {
        for (now, asked, at) in [(1_000, 0, 1_100), (1_000, 250, 1_250), (1_000, 60_000, 6_000), (u64::MAX, 10, u64::MAX)] {
            assert_eq!(retry_send_at(now, asked), at, "{now} {asked}");
        }
    }

    #[test]
    fn delays_are_positive_and_bounded() {
        let cases = [
            (1_000, 5_000, 86_400_000, Ok(6_000)),
            (1_000, 86_400_000, 86_400_000, Ok(86_401_000)),
            (1_000, 86_400_001, 86_400_000, Err(DelayRefusal::TooLong { max_delay_ms: 86_400_000 })),
            (1_000, 0, 86_400_000, Err(DelayRefusal::NotPositive)),
            (u64::MAX - 1, 10, u64::MAX, Ok(u64::MAX)),
        ];
        for (now, delay, max, want) in cases {
            assert_eq!(due_ts(now, delay, max), want, "now {now} delay {delay} max {max}");
        }
    }

    #[test]
    fn a_restart_is_the_whole_delay_from_now() {
        // Scheduled at 0 for 10 s, restarted at 8 s: due at 18 s, not 10 s.
        let first = due_ts(0, 10_000, 60_000).unwrap();
        let restarted = due_ts(8_000, 10_000, 60_000).unwrap();
        assert_eq!((first, restarted), (10_000, 18_000));
        assert_eq!(running_since(restarted, 10_000), 8_000);
    }

    #[test]
    fn the_task_sleeps_until_the_next_due_event_within_bounds() {
        let cases = [
            (1_000, None, MAX_IDLE_MS),
            (1_000, Some(1_250), 250),
            (1_000, Some(900), 0),
            (1_000, Some(1_000), 0),
            (1_000, Some(1_000 + 10 * MAX_IDLE_MS), MAX_IDLE_MS),
        ];
        for (now, next, want_ms) in cases {
            assert_eq!(sleep_for(now, next), Duration::from_millis(want_ms), "now {now} next {next:?}");
        }
    }

    #[test]
    fn a_full_quota_waits_for_the_earliest_event() {
        assert_eq!(quota_retry_after_ms(1_000, 31_000), 30_000);
        assert_eq!(quota_retry_after_ms(1_000, 1_200), 1_000);
        assert_eq!(quota_retry_after_ms(5_000, 1_000), 1_000);
    }

    #[test]
    fn actions_are_named_as_in_msc4140() {
        assert_eq!(Action::parse("restart").unwrap(), Action::Restart);
        assert_eq!(Action::parse("cancel").unwrap(), Action::Cancel);
        assert_eq!(Action::parse("send").unwrap(), Action::Send);
        assert!(matches!(Action::parse("Send"), Err(Error::InvalidParam(_))));
        assert!(matches!(Action::parse(""), Err(Error::InvalidParam(_))));
    }
}
