//! Dynacast, as livekit-server does it (`pkg/rtc/dynacast`): a publisher
//! is told which simulcast qualities of a video track anyone receives
//! (`subscribed_quality_update`), and livekit-client (with `dynacast` on)
//! pauses the encodings nobody wants. The highest quality wanted by a
//! subscriber counts; a rise is sent at once (someone waits for it), a fall
//! only once it has lasted 5 s (a subscriber briefly shrinking a tile or
//! reconnecting must not make the publisher stop and restart its encoder).
//!
//! Pure: time is passed in.

use std::time::{Duration, Instant};

use livekit_protocol as lk;

/// How long a lower quality must be wanted before the publisher is told.
pub const PAUSE_DELAY: Duration = Duration::from_secs(5);

/// The highest quality (0 low … 2 high) any subscriber wants, from each
/// subscriber's wish; `None` when nobody receives the track.
pub fn max_wanted(wants: impl IntoIterator<Item = usize>) -> Option<usize> {
    wants.into_iter().map(|q| q.min(2)).max()
}

/// The qualities up to `max` enabled, the others not, as livekit-server
/// lists them (low, medium, high).
pub fn subscribed_qualities(max: Option<usize>) -> Vec<lk::SubscribedQuality> {
    [lk::VideoQuality::Low, lk::VideoQuality::Medium, lk::VideoQuality::High]
        .into_iter()
        .enumerate()
        .map(|(i, quality)| lk::SubscribedQuality { quality: quality as i32, enabled: max.is_some_and(|m| i <= m) })
        .collect()
}

/// One published video track's dynacast state: the quality the publisher
/// was last told (at first: all, which it publishes unasked) and since when
/// a lower one is wanted.
#[derive(Debug, Clone)]
pub struct Dynacast {
    committed: Option<usize>,
    lower_since: Option<Instant>,
}

impl Default for Dynacast {
    fn default() -> Self {
        Self { committed: Some(2), lower_since: None }
    }
}

impl Dynacast {
    /// Subscribers now want `wanted` at most. Returns the quality to tell
    /// the publisher, when it must be told now.
    pub fn update(&mut self, wanted: Option<usize>, now: Instant) -> Option<Option<usize>> {
        if wanted >= self.committed {
            self.lower_since = None;
            if wanted == self.committed {
                return None;
            }
            self.committed = wanted;
            return Some(wanted);
        }
        let since = *self.lower_since.get_or_insert(now);
        if now.saturating_duration_since(since) < PAUSE_DELAY {
            return None;
        }
        self.lower_since = None;
        self.committed = wanted;
        Some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_wish_counts() {
        let cases: [(&[usize], Option<usize>); 4] = [(&[], None), (&[0], Some(0)), (&[0, 2, 1], Some(2)), (&[7], Some(2))];
        for (wants, expected) in cases {
            assert_eq!(max_wanted(wants.iter().copied()), expected, "{wants:?}");
        }
    }

    #[test]
    fn qualities_are_enabled_up_to_the_maximum() {
        let enabled = |max| subscribed_qualities(max).iter().map(|q| q.enabled).collect::<Vec<_>>();
        assert_eq!(enabled(None), [false, false, false]);
        assert_eq!(enabled(Some(0)), [true, false, false]);
        assert_eq!(enabled(Some(1)), [true, true, false]);
        assert_eq!(enabled(Some(2)), [true, true, true]);
        let order: Vec<i32> = subscribed_qualities(None).iter().map(|q| q.quality).collect();
        assert_eq!(order, [lk::VideoQuality::Low as i32, lk::VideoQuality::Medium as i32, lk::VideoQuality::High as i32]);
    }

    #[test]
    fn rises_are_sent_at_once_and_falls_after_the_pause_delay() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        // (wanted, at second, told)
        type Told = Option<Option<usize>>;
        let steps: &[(Option<usize>, u64, Told)] = &[
            (Some(2), 0, None),           // already publishing everything
            (None, 0, None),              // nobody: wait
            (None, 4, None),              // still within the delay
            (Some(2), 4, None),           // back before the delay: nothing to say
            (None, 5, None),              // a new fall starts its own delay
            (None, 10, Some(None)),       // lasted 5 s: pause everything
            (Some(0), 11, Some(Some(0))), // someone wants the low layer: at once
            (Some(1), 11, Some(Some(1))),
            (Some(0), 12, None),
            (Some(1), 13, None), // the fall was withdrawn
            (Some(0), 14, None),
            (Some(0), 19, Some(Some(0))),
        ];
        let mut d = Dynacast::default();
        for (i, (wanted, at, told)) in steps.iter().enumerate() {
            assert_eq!(d.update(*wanted, s(*at)), *told, "step {i}: {wanted:?} at {at}s");
        }
    }
}
