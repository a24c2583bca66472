//! Delegated delayed leaves (`POST …/delegate_delayed_leave`): which
//! participant's leave event this process keeps alive, and when.
//!
//! A delegation maps a LiveKit room and participant identity to the delay
//! id of that member's delayed leave event. While the participant is
//! connected to the built-in SFU the event is restarted well before it is
//! due; when the SFU reports the participant gone, the event is sent at
//! once; a participant that never connects within the delay is left to its
//! event, which fires on its own. All of that is decided here, without
//! I/O and with the time passed in; `Calls` performs the actions.

use std::collections::{HashMap, HashSet};

use chancery_proto::limits::{MAX_CALL_DELEGATIONS, MAX_CALL_DELEGATIONS_PER_USER, MAX_SFU_PRESENCES};

/// Where the participant of a delegation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Not seen on the SFU since the delegation arrived (at this time).
    Waiting { since_ms: u64 },
    /// On the SFU; the event was last restarted at this time (`None`: not
    /// yet since the participant was seen).
    Connected { restarted_ms: Option<u64> },
}

/// One delegated delayed leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    pub delay_id: String,
    /// The delay the client gave (`delay_timeout`).
    pub delay_ms: u64,
    /// Who delegated it (bounds per user).
    pub user_id: String,
    pub presence: Presence,
}

/// What to do with one delegation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until `at`.
    WaitUntil { at: u64 },
    /// Restart the delayed event now.
    Restart,
    /// Forget the delegation: its participant never came, the event fires
    /// (or fired) on its own.
    Expire,
}

/// Restarts happen when half the delay has passed since the last one.
/// lk-jwt-service restarts at 80 %, over HTTP to a homeserver; here a
/// restart is one indexed write in the same process, and the margin of
/// half a delay absorbs a slow database or a late wake-up.
pub fn restart_interval_ms(delay_ms: u64) -> u64 {
    (delay_ms / 2).max(1)
}

/// The pure decision for one delegation at `now`.
pub fn step(delay_ms: u64, presence: Presence, now: u64) -> Step {
    match presence {
        Presence::Waiting { since_ms } => {
            let gives_up = since_ms.saturating_add(delay_ms);
            if now >= gives_up { Step::Expire } else { Step::WaitUntil { at: gives_up } }
        }
        Presence::Connected { restarted_ms: None } => Step::Restart,
        Presence::Connected { restarted_ms: Some(at) } => {
            let due = at.saturating_add(restart_interval_ms(delay_ms));
            if now >= due { Step::Restart } else { Step::WaitUntil { at: due } }
        }
    }
}

/// The key of a delegation and of a presence: LiveKit room name and
/// participant identity (one session per identity and room on the SFU).
pub type Key = (String, String);

/// Why a delegation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user has [`MAX_CALL_DELEGATIONS_PER_USER`] already.
    TooManyForUser,
    /// The process holds [`MAX_CALL_DELEGATIONS`] already.
    TooMany,
}

/// The delegations of this process and who is on the SFU.
#[derive(Debug, Default)]
pub struct Delegations {
    jobs: HashMap<Key, Delegation>,
    present: HashSet<Key>,
}

impl Delegations {
    /// Records a delegation, replacing one for the same participant (as
    /// lk-jwt-service does: a member's newer delayed leave supersedes the
    /// older). A participant already on the SFU is connected at once.
    pub fn delegate(&mut self, key: Key, delay_id: String, delay_ms: u64, user_id: String, now: u64) -> Result<(), Refusal> {
        if !self.jobs.contains_key(&key) {
            if self.jobs.len() >= MAX_CALL_DELEGATIONS {
                return Err(Refusal::TooMany);
            }
            if self.jobs.values().filter(|d| d.user_id == user_id).count() >= MAX_CALL_DELEGATIONS_PER_USER {
                return Err(Refusal::TooManyForUser);
            }
        }
        let presence = if self.present.contains(&key) {
            Presence::Connected { restarted_ms: None }
        } else {
            Presence::Waiting { since_ms: now }
        };
        self.jobs.insert(key, Delegation { delay_id, delay_ms, user_id, presence });
        Ok(())
    }

    /// The SFU admitted the participant.
    pub fn joined(&mut self, key: Key) {
        if let Some(job) = self.jobs.get_mut(&key)
            && matches!(job.presence, Presence::Waiting { .. })
        {
            job.presence = Presence::Connected { restarted_ms: None };
        }
        if self.present.len() < MAX_SFU_PRESENCES {
            self.present.insert(key);
        }
    }

    /// The participant left the SFU: answers the delay id to send now, if
    /// its leave was delegated (the delegation is gone either way).
    pub fn left(&mut self, key: &Key) -> Option<String> {
        self.present.remove(key);
        self.jobs.remove(key).map(|job| job.delay_id)
    }

    /// Replaces the set of present participants by `present` (the SFU's own
    /// list, after missed events): delegations of participants now present
    /// are connected; those of connected participants no longer present
    /// are removed, and their delay ids answered, to be sent.
    pub fn resync(&mut self, present: Vec<Key>) -> Vec<String> {
        self.present = present.into_iter().take(MAX_SFU_PRESENCES).collect();
        let mut gone = Vec::new();
        let present = &self.present;
        self.jobs.retain(|key, job| match job.presence {
            Presence::Waiting { .. } if present.contains(key) => {
                job.presence = Presence::Connected { restarted_ms: None };
                true
            }
            Presence::Connected { .. } if !present.contains(key) => {
                gone.push(job.delay_id.clone());
                false
            }
            _ => true,
        });
        gone
    }

    /// Applies [`step`] to every delegation: forgets the expired, answers
    /// the delay ids to restart now and the earliest time anything else is
    /// due.
    pub fn due(&mut self, now: u64) -> (Vec<(Key, String)>, Option<u64>) {
        let mut restart = Vec::new();
        let mut next: Option<u64> = None;
        self.jobs.retain(|key, job| match step(job.delay_ms, job.presence, now) {
            Step::Expire => false,
            Step::Restart => {
                restart.push((key.clone(), job.delay_id.clone()));
                true
            }
            Step::WaitUntil { at } => {
                next = Some(next.map_or(at, |n| n.min(at)));
                true
            }
        });
        (restart, next)
    }

    /// A restart of `delay_id` succeeded at `now`: answers when the next
    /// is due (half a delay later). Ignored when the delegation changed
    /// meanwhile.
    pub fn restarted(&mut self, key: &Key, delay_id: &str, now: u64) -> Option<u64> {
        let job = self.jobs.get_mut(key)?;
        if job.delay_id != delay_id || !matches!(job.presence, Presence::Connected { .. }) {
            return None;
        }
        job.presence = Presence::Connected { restarted_ms: Some(now) };
        Some(now.saturating_add(restart_interval_ms(job.delay_ms)))
    }

    /// The event is gone (sent, cancelled, or fired): nothing to keep
    /// alive.
    pub fn forget(&mut self, key: &Key, delay_id: &str) {
        if self.jobs.get(key).is_some_and(|job| job.delay_id == delay_id) {
            self.jobs.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_presence_and_time() {
        use Presence::*;
        let cases = [
            ("waiting, before the delay", 10_000, Waiting { since_ms: 1_000 }, 5_000, Step::WaitUntil { at: 11_000 }),
            ("waiting, the delay is over", 10_000, Waiting { since_ms: 1_000 }, 11_000, Step::Expire),
            ("connected, never restarted", 10_000, Connected { restarted_ms: None }, 0, Step::Restart),
            (
                "connected, restarted just now",
                10_000,
                Connected { restarted_ms: Some(7_000) },
                7_000,
                Step::WaitUntil { at: 12_000 },
            ),
            ("connected, half the delay passed", 10_000, Connected { restarted_ms: Some(7_000) }, 12_000, Step::Restart),
            ("connected, overdue", 10_000, Connected { restarted_ms: Some(7_000) }, 90_000, Step::Restart),
            ("a 1 ms delay still waits", 1, Connected { restarted_ms: Some(5) }, 5, Step::WaitUntil { at: 6 }),
            ("no overflow", u64::MAX, Waiting { since_ms: 5 }, 6, Step::WaitUntil { at: u64::MAX }),
        ];
        for (what, delay, presence, now, want) in cases {
            assert_eq!(step(delay, presence, now), want, "{what}");
        }
    }

    fn key(identity: &str) -> Key {
        ("room".into(), identity.into())
    }

    #[test]
    fn a_delegation_follows_its_participant() {
        let mut d = Delegations::default();
        d.delegate(key("a"), "d1".into(), 10_000, "@a:x".into(), 0).unwrap();
        assert_eq!(d.due(1_000), (vec![], Some(10_000)), "waiting for the participant");
        d.joined(key("a"));
        assert_eq!(d.due(2_000).0, vec![(key("a"), "d1".to_owned())], "restarted as soon as it connects");
        assert_eq!(d.restarted(&key("a"), "d1", 2_000), Some(7_000));
        assert_eq!(d.due(3_000), (vec![], Some(7_000)));
        assert_eq!(d.due(7_000).0.len(), 1);
        assert_eq!(d.left(&key("a")), Some("d1".to_owned()), "its leave is sent");
        assert!(d.is_empty());
        assert_eq!(d.left(&key("a")), None, "once");
    }

    #[test]
    fn a_participant_already_on_the_sfu_is_connected_at_once() {
        let mut d = Delegations::default();
        d.joined(key("a"));
        d.delegate(key("a"), "d1".into(), 10_000, "@a:x".into(), 0).unwrap();
        assert_eq!(d.due(0).0.len(), 1);
    }

    #[test]
    fn an_absent_participant_leaves_the_event_to_fire() {
        let mut d = Delegations::default();
        d.delegate(key("a"), "d1".into(), 10_000, "@a:x".into(), 0).unwrap();
        assert_eq!(d.due(10_000), (vec![], None));
        assert!(d.is_empty());
        d.joined(key("a"));
        assert_eq!(d.left(&key("a")), None, "nothing to send for a forgotten delegation");
    }

    #[test]
    fn a_newer_delegation_replaces_and_stale_results_are_ignored() {
        let mut d = Delegations::default();
        d.joined(key("a"));
        d.delegate(key("a"), "d1".into(), 10_000, "@a:x".into(), 0).unwrap();
        d.delegate(key("a"), "d2".into(), 10_000, "@a:x".into(), 0).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d.restarted(&key("a"), "d1", 1_000), None);
        d.forget(&key("a"), "d1");
        assert_eq!(d.due(1_000).0, vec![(key("a"), "d2".to_owned())], "d1's results do not touch d2");
        d.forget(&key("a"), "d2");
        assert!(d.is_empty());
    }

    #[test]
    fn a_resync_sends_the_leaves_of_those_missed_leaving() {
        let mut d = Delegations::default();
        for who in ["stays", "left unseen", "came unseen"] {
            d.delegate(key(who), format!("d-{who}"), 10_000, format!("@{who}:x"), 0).unwrap();
        }
        d.joined(key("stays"));
        d.joined(key("left unseen"));
        let gone = d.resync(vec![key("stays"), key("came unseen")]);
        assert_eq!(gone, vec!["d-left unseen".to_owned()]);
        let mut restart: Vec<String> = d.due(0).0.into_iter().map(|(_, id)| id).collect();
        restart.sort();
        assert_eq!(restart, vec!["d-came unseen".to_owned(), "d-stays".to_owned()]);
        assert_eq!(d.left(&key("came unseen")), Some("d-came unseen".to_owned()), "known present now");
    }

    #[test]
    fn delegations_are_bounded_per_user() {
        let mut d = Delegations::default();
        for n in 0..MAX_CALL_DELEGATIONS_PER_USER {
            d.delegate(key(&n.to_string()), format!("d{n}"), 10_000, "@a:x".into(), 0).unwrap();
        }
        assert_eq!(d.delegate(key("one more"), "dx".into(), 10_000, "@a:x".into(), 0), Err(Refusal::TooManyForUser));
        assert_eq!(d.delegate(key("0"), "again".into(), 10_000, "@a:x".into(), 0), Ok(()), "a replacement is no more");
        assert_eq!(d.delegate(key("b"), "db".into(), 10_000, "@b:x".into(), 0), Ok(()), "another user");
    }
}
