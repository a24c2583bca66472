//! Active speakers, decided as livekit-server decides them
//! (`pkg/sfu/audio/audiolevel.go`, `pkg/rtc/room.go`): each audio track's
//! RTP audio level header extension (RFC 6464: 0 loudest … 127 silent, in
//! −dBov) is watched over 400 ms windows; a window counts when the level
//! was at least −35 dBov for 40 % of it, and its loudest level, weighted by
//! how much of the window was loud, is turned linear (0..1) and smoothed
//! over two windows. Every 400 ms the room's speakers are listed loudest
//! first (levels quantised to eighths) and those whose level changed, plus
//! those who fell silent (level 0, inactive), are sent as `speakers_changed`.
//!
//! Pure: time is passed in, nothing here reads a clock.

use std::time::{Duration, Instant};

use livekit_protocol as lk;

/// How often speakers are re-evaluated and changes sent.
pub const UPDATE_INTERVAL: Duration = Duration::from_millis(400);
/// The quietest level (−dBov) that counts as speaking.
pub const ACTIVE_LEVEL: u8 = 35;
/// Share of a window (percent) that must be at least `ACTIVE_LEVEL`.
pub const MIN_PERCENTILE: u32 = 40;
/// Windows the exponential moving average spans.
pub const SMOOTH_INTERVALS: u32 = 2;
/// Levels sent are rounded up to this many steps (fewer, steadier updates).
pub const QUANTIZATION: f32 = 8.0;
const SILENT: u8 = 127;

/// `10^(−level/20)`: a −dBov level as a linear 0..1 amplitude.
pub fn linear(level: f64) -> f64 {
    10f64.powf(-level / 20.0)
}

/// One audio track's smoothed level.
#[derive(Debug, Clone)]
pub struct AudioLevel {
    smoothed: f64,
    loudest: u8,
    active_ms: u32,
    observed_ms: u32,
    last_observed: Option<Instant>,
    /// Highest RTP time seen, whose advance gives each packet's duration.
    highest_rtp_time: Option<u32>,
}

impl Default for AudioLevel {
    fn default() -> Self {
        Self { smoothed: 0.0, loudest: SILENT, active_ms: 0, observed_ms: 0, last_observed: None, highest_rtp_time: None }
    }
}

impl AudioLevel {
    /// A packet with audio `level` (0 loudest … 127 silent) and RTP time
    /// `rtp_time` at `clock_rate` Hz arrived at `now`. Packets older than
    /// the newest seen (reordered) are ignored.
    pub fn observe(&mut self, level: u8, rtp_time: u32, clock_rate: u32, now: Instant) {
        let highest = *self.highest_rtp_time.get_or_insert(rtp_time);
        let advance = rtp_time.wrapping_sub(highest);
        if advance >= 1 << 31 || clock_rate == 0 {
            return;
        }
        self.highest_rtp_time = Some(rtp_time);
        let duration_ms = (u64::from(advance) * 1000 / u64::from(clock_rate)).min(u64::from(u32::MAX)) as u32;
        self.observe_duration(level.min(SILENT), duration_ms, now);
    }

    fn observe_duration(&mut self, level: u8, duration_ms: u32, now: Instant) {
        let interval_ms = UPDATE_INTERVAL.as_millis() as u32;
        self.last_observed = Some(now);
        self.observed_ms = self.observed_ms.saturating_add(duration_ms);
        if level <= ACTIVE_LEVEL {
            self.active_ms = self.active_ms.saturating_add(duration_ms);
            self.loudest = self.loudest.min(level);
        }
        if self.observed_ms < interval_ms {
            return;
        }
        let mut smoothed = 0.0;
        if self.active_ms >= MIN_PERCENTILE * interval_ms / 100 {
            // Louder when loud for longer than the window (a late window).
            let weight = 20.0 * (f64::from(self.active_ms) / f64::from(interval_ms)).log10();
            let level = linear(f64::from(self.loudest) - weight);
            let factor = 2.0 / f64::from(SMOOTH_INTERVALS + 1);
            smoothed = self.smoothed + (level - self.smoothed) * factor;
        }
        self.reset(smoothed);
    }

    fn reset(&mut self, smoothed: f64) {
        self.smoothed = smoothed;
        self.loudest = SILENT;
        self.active_ms = 0;
        self.observed_ms = 0;
    }

    /// The smoothed level (0..1) and whether it counts as speaking. A
    /// track silent for two windows (no packets: muted, DTX) drops to 0.
    pub fn level(&mut self, now: Instant) -> (f64, bool) {
        if self.last_observed.is_none_or(|at| now.saturating_duration_since(at) >= 2 * UPDATE_INTERVAL) {
            self.reset(0.0);
        }
        (self.smoothed, self.smoothed >= linear(f64::from(ACTIVE_LEVEL)))
    }
}

/// The room's speakers from each participant's `(sid, level, active)`:
/// the active ones, loudest first, levels quantised.
pub fn active_speakers(levels: impl IntoIterator<Item = (String, f64, bool)>) -> Vec<lk::SpeakerInfo> {
    let mut speakers: Vec<lk::SpeakerInfo> = levels
        .into_iter()
        .filter(|(_, _, active)| *active)
        .map(|(sid, level, active)| lk::SpeakerInfo { sid, level: level as f32, active })
        .collect();
    speakers.sort_by(|a, b| b.level.total_cmp(&a.level).then_with(|| a.sid.cmp(&b.sid)));
    for s in &mut speakers {
        s.level = (s.level * QUANTIZATION).ceil() / QUANTIZATION;
    }
    speakers
}

/// What to send after `previous` (the last evaluation's speakers) became
/// `current`: speakers new or whose level changed, then those no longer
/// speaking with level 0 and `active` false. Empty: nothing to send.
pub fn changes(previous: &[lk::SpeakerInfo], current: &[lk::SpeakerInfo]) -> Vec<lk::SpeakerInfo> {
    let mut changed: Vec<lk::SpeakerInfo> =
        current.iter().filter(|s| previous.iter().find(|p| p.sid == s.sid).is_none_or(|p| p.level != s.level)).cloned().collect();
    for gone in previous.iter().filter(|p| !current.iter().any(|s| s.sid == p.sid)) {
        changed.push(lk::SpeakerInfo { sid: gone.sid.clone(), level: 0.0, active: false });
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds 20 ms Opus packets (960 ticks at 48 kHz) of the given levels.
    fn feed(audio: &mut AudioLevel, t0: Instant, start: u32, levels: &[u8]) -> Instant {
        let mut now = t0;
        for (i, level) in levels.iter().enumerate() {
            let n = start + i as u32;
            now = t0 + Duration::from_millis(20 * u64::from(n));
            audio.observe(*level, n.wrapping_mul(960), 48_000, now);
        }
        now
    }

    #[test]
    fn linear_levels() {
        for (db, expected) in [(0.0, 1.0), (20.0, 0.1), (40.0, 0.01), (35.0, 0.017_78)] {
            assert!((linear(db) - expected).abs() < 1e-4, "{db}");
        }
    }

    #[test]
    fn speaking_needs_enough_loud_time_in_a_window() {
        // (levels of 20 ms packets over 2 windows, speaking at the end)
        let loud = [20u8; 41];
        let quiet = [60u8; 41];
        let mut beeps = [90u8; 41]; // one loud packet in 25: a 20 ms beep twice a second
        beeps[0] = 10;
        beeps[25] = 10;
        // Loud half of the time: very loud speech counts, moderate does not
        // (the level is weighted down by the quiet half).
        let half = |level| {
            let mut levels = [60u8; 41];
            for l in levels.iter_mut().step_by(2) {
                *l = level;
            }
            levels
        };
        let (half_shouting, half_talking) = (half(10), half(30));
        let cases: &[(&[u8], bool)] =
            &[(&loud, true), (&quiet, false), (&beeps, false), (&half_shouting, true), (&half_talking, false)];
        for (levels, speaking) in cases {
            let t0 = Instant::now();
            let mut audio = AudioLevel::default();
            let now = feed(&mut audio, t0, 0, levels);
            assert_eq!(audio.level(now).1, *speaking, "{levels:?}");
        }
    }

    #[test]
    fn the_level_is_smoothed_and_falls_to_zero_when_packets_stop() {
        let t0 = Instant::now();
        let mut audio = AudioLevel::default();
        // First window at −20 dBov all the time: 0.1 × 2/3.
        let now = feed(&mut audio, t0, 0, &[20; 21]);
        let (level, active) = audio.level(now);
        assert!((level - 0.1 * 2.0 / 3.0).abs() < 1e-3, "{level}");
        assert!(active);
        // Second window too: 0.0667 + (0.1 − 0.0667) × 2/3.
        let now = feed(&mut audio, t0, 21, &[20; 20]);
        let (level, _) = audio.level(now);
        assert!((level - (0.1 * 2.0 / 3.0 + (0.1 - 0.1 * 2.0 / 3.0) * 2.0 / 3.0)).abs() < 1e-3, "{level}");
        // Nothing for two windows: silent.
        assert!(audio.level(now + Duration::from_millis(799)).1);
        assert_eq!(audio.level(now + Duration::from_millis(800)), (0.0, false));
    }

    #[test]
    fn reordered_packets_add_no_time() {
        let t0 = Instant::now();
        let mut audio = AudioLevel::default();
        audio.observe(10, 96_000, 48_000, t0);
        audio.observe(10, 0, 48_000, t0); // older: ignored
        audio.observe(10, 96_000 + 960, 48_000, t0);
        assert_eq!(audio.observed_ms, 20);
        // Wrapping RTP time still advances.
        let mut wrap = AudioLevel::default();
        wrap.observe(10, u32::MAX - 479, 48_000, t0);
        wrap.observe(10, 480, 48_000, t0);
        assert_eq!(wrap.observed_ms, 20);
    }

    fn speaker(sid: &str, level: f32) -> lk::SpeakerInfo {
        lk::SpeakerInfo { sid: sid.into(), level, active: level > 0.0 }
    }

    #[test]
    fn speakers_are_listed_loudest_first_and_quantised() {
        let speakers =
            active_speakers([("PA_a".to_owned(), 0.1, true), ("PA_b".to_owned(), 0.6, true), ("PA_c".to_owned(), 0.9, false)]);
        assert_eq!(speakers, vec![speaker("PA_b", 0.625), speaker("PA_a", 0.125)]);
    }

    #[test]
    fn changes_name_new_louder_and_silent_speakers() {
        let a = speaker("PA_a", 0.25);
        let b = speaker("PA_b", 0.5);
        let cases: Vec<(Vec<lk::SpeakerInfo>, Vec<lk::SpeakerInfo>, Vec<lk::SpeakerInfo>)> = vec![
            (vec![], vec![], vec![]),
            (vec![], vec![a.clone()], vec![a.clone()]),
            (vec![a.clone()], vec![a.clone()], vec![]),
            (vec![a.clone()], vec![b.clone(), a.clone()], vec![b.clone()]),
            (vec![a.clone()], vec![speaker("PA_a", 0.5)], vec![speaker("PA_a", 0.5)]),
            (
                vec![b.clone(), a.clone()],
                vec![b.clone()],
                vec![lk::SpeakerInfo { sid: "PA_a".into(), level: 0.0, active: false }],
            ),
        ];
        for (previous, current, expected) in cases {
            assert_eq!(changes(&previous, &current), expected, "{previous:?} → {current:?}");
        }
    }
}
