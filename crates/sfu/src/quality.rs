//! Connection quality, scored as livekit-server scores it
//! (`pkg/sfu/connectionquality/scorer.go`) from what the SFU sees of each
//! participant's published streams: every 5 s window's packet loss (gaps in
//! the extended RTP sequence numbers) gives a score of `100 − loss% ×
//! weight` (weight 10 for video, 8 for Opus: 2 % video loss falls to GOOD,
//! 6 % to POOR), the worst of the participant's streams counts, and scores
//! move towards it slowly when rising (0.4) and fast when falling (0.8),
//! never below 30. Above 80 is EXCELLENT, above 40 GOOD, above 20 POOR.
//! The score sent is the matching mean opinion score (1..4.5).
//!
//! Pure: windows are cut by the caller, on its clock.

use std::time::Duration;

use livekit_protocol as lk;

/// How often scores are computed and, when one changed, sent.
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(5);
/// Loss weights (livekit-server's `getPacketLossWeight`).
pub const VIDEO_LOSS_WEIGHT: f64 = 10.0;
pub const AUDIO_LOSS_WEIGHT: f64 = 8.0;
/// A score starts here (a fresh participant is EXCELLENT).
pub const MAX_SCORE: f64 = 100.0;
const MIN_SCORE: f64 = 30.0;
const INCREASE_FACTOR: f64 = 0.4;
const DECREASE_FACTOR: f64 = 0.8;

/// Counts one received stream's packets by extended sequence number and
/// cuts them into windows.
#[derive(Debug, Clone, Default)]
pub struct LossCounter {
    /// Highest sequence number at the end of the last window (the one
    /// before the first packet at first).
    base: Option<u64>,
    highest: Option<u64>,
    received: u64,
}

/// One window of a stream: packets received and lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub received: u64,
    pub lost: u64,
}

impl LossCounter {
    /// A packet with extended sequence number `seq` arrived.
    pub fn packet(&mut self, seq: u64) {
        self.base.get_or_insert(seq.saturating_sub(1));
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.received += 1;
    }

    /// Ends the window: how many packets came and how many of those
    /// expected (the sequence numbers the window advanced over) did not.
    /// Late packets of an earlier window count as received, so a window
    /// never reports more loss than there was.
    pub fn take_window(&mut self) -> Window {
        let expected = match (self.base, self.highest) {
            (Some(base), Some(highest)) => highest.saturating_sub(base),
            _ => 0,
        };
        let window = Window { received: self.received, lost: expected.saturating_sub(self.received) };
        self.base = self.highest.or(self.base);
        self.received = 0;
        window
    }
}

/// A window's score before smoothing; `None` when nothing was received.
pub fn packet_score(window: Window, loss_weight: f64) -> Option<f64> {
    if window.received == 0 {
        return None;
    }
    let loss_percent = window.lost as f64 * 100.0 / window.received as f64;
    Some((MAX_SCORE - loss_percent * loss_weight).max(0.0))
}

/// The participant's next score from its last one and the window's
/// (`None`: no media this window, the score stays).
pub fn smooth(previous: f64, window: Option<f64>) -> f64 {
    let Some(score) = window else {
        return previous;
    };
    let factor = if score < previous { DECREASE_FACTOR } else { INCREASE_FACTOR };
    (factor * score + (1.0 - factor) * previous).max(MIN_SCORE)
}

/// The quality a score stands for.
pub fn quality(score: f64) -> lk::ConnectionQuality {
    if score > 80.0 {
        lk::ConnectionQuality::Excellent
    } else if score > 40.0 {
        lk::ConnectionQuality::Good
    } else if score > 20.0 {
        lk::ConnectionQuality::Poor
    } else {
        lk::ConnectionQuality::Lost
    }
}

/// The mean opinion score (1..4.5) a score stands for (ITU-T G.107's
/// R-factor to MOS mapping).
pub fn mos(score: f64) -> f32 {
    if score <= 0.0 {
        1.0
    } else if score >= 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * score + 0.000_007 * score * (score - 60.0) * (100.0 - score)) as f32
    }
}

/// Whether a room's qualities are worth sending: someone is new or their
/// quality changed (`previous` from the last update sent, by sid).
pub fn changed(previous: &[(String, lk::ConnectionQuality)], current: &[(String, lk::ConnectionQuality)]) -> bool {
    current.iter().any(|(sid, q)| previous.iter().find(|(p, _)| p == sid).is_none_or(|(_, pq)| pq != q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lk::ConnectionQuality::{Excellent, Good, Lost, Poor};

    #[test]
    fn counts_gaps_per_window() {
        let mut c = LossCounter::default();
        for seq in [100, 101, 102, 104, 105] {
            c.packet(seq);
        }
        assert_eq!(c.take_window(), Window { received: 5, lost: 1 });
        // 103 arrives late, then 106..=109 minus 108.
        for seq in [103, 106, 107, 109] {
            c.packet(seq);
        }
        assert_eq!(c.take_window(), Window { received: 4, lost: 0 });
        assert_eq!(c.take_window(), Window { received: 0, lost: 0 });
        c.packet(120);
        assert_eq!(c.take_window(), Window { received: 1, lost: 10 });
        assert_eq!(LossCounter::default().take_window(), Window::default());
    }

    #[test]
    fn scores_packet_loss_by_kind() {
        let w = |received, lost| Window { received, lost };
        let cases = [
            (w(100, 0), VIDEO_LOSS_WEIGHT, Some(100.0)),
            (w(100, 2), VIDEO_LOSS_WEIGHT, Some(80.0)),
            (w(100, 6), VIDEO_LOSS_WEIGHT, Some(40.0)),
            (w(100, 2), AUDIO_LOSS_WEIGHT, Some(84.0)),
            (w(100, 50), AUDIO_LOSS_WEIGHT, Some(0.0)),
            (w(0, 0), VIDEO_LOSS_WEIGHT, None),
        ];
        for (window, weight, expected) in cases {
            assert_eq!(packet_score(window, weight), expected, "{window:?} {weight}");
        }
    }

    #[test]
    fn scores_fall_fast_rise_slowly_and_stay_above_the_floor() {
        let cases = [
            (100.0, Some(100.0), 100.0),
            (100.0, None, 100.0),
            (100.0, Some(50.0), 60.0),
            (60.0, Some(100.0), 76.0),
            (100.0, Some(0.0), 30.0),
            (30.0, None, 30.0),
        ];
        for (previous, window, expected) in cases {
            let got = smooth(previous, window);
            assert!((got - expected).abs() < 1e-9, "{previous} {window:?}: {got}");
        }
    }

    #[test]
    fn maps_scores_to_qualities_and_mos() {
        let cases = [(100.0, Excellent), (80.1, Excellent), (80.0, Good), (40.1, Good), (40.0, Poor), (20.0, Lost), (0.0, Lost)];
        for (score, expected) in cases {
            assert_eq!(quality(score), expected, "{score}");
        }
        for (score, expected) in [(0.0, 1.0), (100.0, 4.5), (50.0, 2.575), (80.0, 4.024)] {
            assert!((mos(score) - expected).abs() < 1e-3, "{score}: {}", mos(score));
        }
    }

    #[test]
    fn an_update_is_sent_for_newcomers_and_changes_only() {
        let s = |sid: &str, q| (sid.to_owned(), q);
        let cases = [
            (vec![], vec![], false),
            (vec![], vec![s("a", Excellent)], true),
            (vec![s("a", Excellent)], vec![s("a", Excellent)], false),
            (vec![s("a", Excellent)], vec![s("a", Good)], true),
            (vec![s("a", Excellent), s("b", Good)], vec![s("a", Excellent)], false),
            (vec![s("a", Excellent)], vec![s("a", Excellent), s("b", Excellent)], true),
        ];
        for (previous, current, expected) in cases {
            assert_eq!(changed(&previous, &current), expected, "{previous:?} → {current:?}");
        }
    }
}
