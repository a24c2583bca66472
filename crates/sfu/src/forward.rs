//! Pure forwarding decisions: which simulcast layer a subscriber gets, when a
//! layer switch may happen, and how sequence numbers and RTP times are
//! rewritten so each subscriber sees one continuous stream.
//!
//! Nothing here looks at a clock or a socket; the `Sfu` calls these for every
//! forwarded packet, and they are table-tested below.

/// The simulcast layers livekit-client publishes, lowest first (`q`uarter,
/// `h`alf, `f`ull resolution: `VideoQuality.LOW/MEDIUM/HIGH`).
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// The layer a subscriber should receive: the highest one published that is
/// not above what it asked for (`quality` indexes [`SIMULCAST_RIDS`]; `None`
/// means no preference, i.e. the highest). With no layer published at or
/// below the request, the lowest published one.
pub fn choose_rid<'a>(published: &[&'a str], quality: Option<usize>) -> Option<&'a str> {
    let rank = |rid: &str| SIMULCAST_RIDS.iter().position(|r| *r == rid);
    let cap = quality.unwrap_or(SIMULCAST_RIDS.len() - 1);
    let mut ranked: Vec<(usize, &'a str)> = published.iter().filter_map(|rid| rank(rid).map(|r| (r, *rid))).collect();
    ranked.sort_unstable();
    ranked.iter().rev().find(|(r, _)| *r <= cap).or_else(|| ranked.first()).map(|(_, rid)| *rid)
}

/// Whether an RTP payload starts a VP8 key frame (RFC 7741 §4.2–4.3): the
/// start of a partition 0 (`S` set, `PID` 0) whose VP8 payload header has the
/// inverse key frame bit `P` clear. The payload descriptor and that first
/// byte stay in clear text under Element Call's frame encryption, which
/// leaves the VP8 header unencrypted for exactly this purpose.
pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let pid = first & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&x) = payload.get(at) else {
            return false;
        };
        at += 1;
        if x & 0x80 != 0 {
            // PictureID, 7 or 15 bits.
            let Some(&pic) = payload.get(at) else {
                return false;
            };
            at += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID/Y/KEYIDX
        }
    }
    payload.get(at).is_some_and(|b| b & 0x01 == 0)
}

/// Rewrites one subscriber's view of a forwarded track: sequence numbers
/// start at 1 and stay contiguous across layer switches (str0m's SRTP
/// rollover counter then starts at 0 for the subscriber, as it must), and RTP
/// times continue from the previous layer's.
#[derive(Debug, Clone, Default)]
pub struct Rewriter {
    /// `out = in + seq_offset` for the current source; `None` before the
    /// first packet or right after a switch.
    seq_offset: Option<i64>,
    time_offset: u32,
    last_out_seq: u64,
    last_out_time: u32,
    /// Highest incoming (extended) sequence number seen on this source.
    highest_in_seq: u64,
    /// The current source's first sequence number: anything older belongs
    /// before the switch and is dropped, or it would reuse a number.
    first_in_seq: u64,
}

/// One rewritten packet's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq_no: u64,
    pub time: u32,
}

impl Rewriter {
    /// Marks the next packet as coming from a new source (a layer switch):
    /// it continues one sequence number and `time_step` RTP ticks after the
    /// last one written.
    pub fn switch_source(&mut self) {
        self.seq_offset = None;
    }

    /// Rewrites a packet with the source's extended sequence number and RTP
    /// time. `None` for a packet older than the first one of this source
    /// (it would reuse a number already written).
    pub fn rewrite(&mut self, in_seq: u64, in_time: u32, time_step: u32) -> Option<Rewritten> {
        let offset = match self.seq_offset {
            Some(offset) => offset,
            None => {
                let next_out = self.last_out_seq + 1;
                let offset = next_out as i64 - in_seq as i64;
                let next_time = if self.last_out_seq == 0 { in_time } else { self.last_out_time.wrapping_add(time_step) };
                self.time_offset = next_time.wrapping_sub(in_time);
                self.seq_offset = Some(offset);
                self.highest_in_seq = in_seq;
                self.first_in_seq = in_seq;
                offset
            }
        };
        if in_seq < self.first_in_seq {
            return None;
        }
        let out = (in_seq as i64 + offset) as u64;
        let time = in_time.wrapping_add(self.time_offset);
        if in_seq >= self.highest_in_seq {
            self.highest_in_seq = in_seq;
            self.last_out_seq = out;
            self.last_out_time = time;
        }
        Some(Rewritten { seq_no: out, time })
    }
}

/// How often a subscriber waiting for a key frame asks for one again.
pub const KEYFRAME_ASK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a subscriber still waiting for a key frame asks again now,
/// having last asked at `asked` (never: at once).
pub fn ask_keyframe_again(asked: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    asked.is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_ASK_INTERVAL)
}

/// How long the layer being forwarded may send nothing before another
/// layer's packets make the subscriber leave it.
pub const LAYER_STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the layer being forwarded, last forwarded at `last` (never:
/// it is), has stopped by `now`.
pub fn layer_stalled(last: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= LAYER_STALL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_the_highest_layer_not_above_the_request() {
        let cases: &[(&[&str], Option<usize>, Option<&str>)] = &[
            (&["q", "h", "f"], None, Some("f")),
            (&["f", "q", "h"], None, Some("f")),
            (&["q", "h"], None, Some("h")),
            (&["q", "h", "f"], Some(1), Some("h")),
            (&["q", "h", "f"], Some(0), Some("q")),
            (&["h", "f"], Some(0), Some("h")),
            (&[], None, None),
            (&["x"], None, None),
        ];
        for (published, quality, expected) in cases {
            assert_eq!(choose_rid(published, *quality), *expected, "{published:?} {quality:?}");
        }
    }

    #[test]
    fn key_frames_are_asked_for_again_at_most_twice_a_second() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + std::time::Duration::from_millis(n);
        for (asked, now, again) in
            [(None, t0, true), (Some(t0), ms(100), false), (Some(t0), ms(499), false), (Some(t0), ms(500), true)]
        {
            assert_eq!(ask_keyframe_again(asked, now), again, "{asked:?} {now:?}");
        }
    }

    #[test]
    fn a_layer_silent_for_a_second_has_stalled() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + std::time::Duration::from_millis(n);
        for (last, now, stalled) in
            [(None, t0, true), (Some(t0), ms(0), false), (Some(t0), ms(999), false), (Some(t0), ms(1000), true)]
        {
            assert_eq!(layer_stalled(last, now), stalled, "{last:?} {now:?}");
        }
    }

    #[test]
    fn recognises_vp8_key_frames() {
        let cases: &[(&[u8], bool)] = &[
            // S=1 PID=0, no extension, P=0: key frame.
            (&[0x10, 0x00, 0x9d], true),
            // Same with P=1: delta frame.
            (&[0x10, 0x01, 0x9d], false),
            // Not the start of a partition.
            (&[0x00, 0x00], false),
            // Extended with a 15-bit picture id, TL0PICIDX and TID: key frame.
            (&[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x00], true),
            // Extended with a 7-bit picture id, delta frame.
            (&[0x90, 0x80, 0x12, 0x01], false),
            // Truncated.
            (&[0x90, 0x80], false),
            (&[], false),
        ];
        for (payload, expected) in cases {
            assert_eq!(vp8_is_keyframe(payload), *expected, "{payload:02x?}");
        }
    }

    #[test]
    fn rewrites_contiguously_across_a_source_switch() {
        let mut rw = Rewriter::default();
        assert_eq!(rw.rewrite(5000, 90_000, 3000), Some(Rewritten { seq_no: 1, time: 90_000 }));
        assert_eq!(rw.rewrite(5001, 93_000, 3000), Some(Rewritten { seq_no: 2, time: 93_000 }));
        // A reordered packet keeps its place.
        assert_eq!(rw.rewrite(5003, 99_000, 3000), Some(Rewritten { seq_no: 4, time: 99_000 }));
        assert_eq!(rw.rewrite(5002, 96_000, 3000), Some(Rewritten { seq_no: 3, time: 96_000 }));
        rw.switch_source();
        // The new layer has its own numbering; output continues after 4.
        assert_eq!(rw.rewrite(200, 1_000, 3000), Some(Rewritten { seq_no: 5, time: 102_000 }));
        assert_eq!(rw.rewrite(201, 4_000, 3000), Some(Rewritten { seq_no: 6, time: 105_000 }));
        // A straggler from before the switch would reuse number 4: dropped.
        assert_eq!(rw.rewrite(199, 0, 3000), None);
    }

    #[test]
    fn drops_packets_that_would_precede_the_first() {
        let mut rw = Rewriter::default();
        assert_eq!(rw.rewrite(10, 0, 3000), Some(Rewritten { seq_no: 1, time: 0 }));
        assert_eq!(rw.rewrite(9, 0, 3000), None);
    }
}
