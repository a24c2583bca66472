//! What the SFU measures and bounds on a publisher's incoming media: the
//! packets lost on the way in (from RTP sequence numbers) and the
//! per-publisher bitrate cap.
//!
//! The cap is a token bucket over the bytes of RTP payload the publisher
//! sends (all tracks and simulcast layers together), refilled at
//! `max_publisher_bitrate` and holding one second's worth: a packet that
//! finds the bucket empty is *not forwarded* (counted in
//! [`crate::SfuStats::over_bitrate_packets`]). The SFU does not ask the
//! client to send less (no REMB or TWCC feedback of its own beyond str0m's
//! defaults), so a publisher over the cap sees its subscribers' video break
//! up and ask for key frames; the cap is a guard against a misbehaving or
//! hostile client, set well above what livekit-client sends (about 2.5
//! Mbit/s for 720p with three simulcast layers, 3–5 Mbit/s for screen
//! sharing).

use std::time::Instant;

use str0m::rtp::Ssrc;

use super::data::TokenBucket;

/// Incoming streams one publisher is measured on; past it the oldest is
/// forgotten (tracks × simulcast layers is far below).
const MAX_STREAMS: usize = 64;

/// Loss on one incoming RTP stream: packets expected from the sequence
/// numbers seen minus packets received (RFC 3550 A.3), reported as it
/// grows. A late packet that arrives after its loss was reported does not
/// take the loss back: the figure is an upper bound under reordering.
#[derive(Debug, Clone, Default)]
pub struct LossCounter {
    first: Option<u64>,
    highest: u64,
    received: u64,
    reported: u64,
}

impl LossCounter {
    /// Counts a packet with extended sequence number `seq`; returns how
    /// many more packets are now known lost.
    pub fn packet(&mut self, seq: u64) -> u64 {
        let first = *self.first.get_or_insert(seq);
        if seq < first {
            // Older than the first seen: counted neither way.
            return 0;
        }
        self.highest = self.highest.max(seq);
        self.received += 1;
        let expected = self.highest - first + 1;
        let lost = expected.saturating_sub(self.received);
        let new = lost.saturating_sub(self.reported);
        self.reported += new;
        new
    }
}

/// One publisher's meter.
pub(super) struct PublisherMeter {
    bitrate: TokenBucket,
    streams: Vec<(Ssrc, LossCounter)>,
}

impl PublisherMeter {
    pub(super) fn new(max_bitrate_bps: u64) -> Self {
        let bytes_per_second = max_bitrate_bps / 8;
        Self { bitrate: TokenBucket::new(bytes_per_second, bytes_per_second), streams: Vec::new() }
    }

    /// Measures one received packet: whether it is within the bitrate cap,
    /// and how many packets of its stream are newly known lost.
    pub(super) fn packet(&mut self, now: Instant, ssrc: Ssrc, seq: u64, len: usize) -> (bool, u64) {
        let index = match self.streams.iter().position(|(s, _)| *s == ssrc) {
            Some(index) => index,
            None => {
                if self.streams.len() >= MAX_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push((ssrc, LossCounter::default()));
                self.streams.len() - 1
            }
        };
        let lost = self.streams[index].1.packet(seq);
        (self.bitrate.take(now, len as u64), lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn loss_is_counted_from_sequence_gaps() {
        // (sequence numbers received, loss reported after each)
        let cases: &[(&[u64], &[u64])] = &[
            (&[1, 2, 3], &[0, 0, 0]),
            (&[1, 3, 4], &[0, 1, 0]),
            (&[10, 15], &[0, 4]),
            // Reordered: 3 arrives after 4, its loss was already reported.
            (&[1, 2, 4, 3, 5], &[0, 0, 1, 0, 0]),
            // Duplicates do not hide later losses forever.
            (&[1, 1, 3], &[0, 0, 0]),
            // Older than the first: ignored.
            (&[5, 4, 6], &[0, 0, 0]),
        ];
        for (seqs, expected) in cases {
            let mut counter = LossCounter::default();
            let got: Vec<u64> = seqs.iter().map(|s| counter.packet(*s)).collect();
            assert_eq!(&got, expected, "{seqs:?}");
        }
    }

    #[test]
    fn bitrate_cap_lets_one_second_through_then_the_rate() {
        let t0 = Instant::now();
        // 80 kbit/s = 10,000 bytes a second.
        let mut meter = PublisherMeter::new(80_000);
        let ssrc = Ssrc::from(7);
        let mut passed = 0;
        for seq in 0..20 {
            if meter.packet(t0, ssrc, seq, 1000).0 {
                passed += 1;
            }
        }
        assert_eq!(passed, 10, "a second's worth at once");
        assert!(!meter.packet(t0 + Duration::from_millis(50), ssrc, 20, 1000).0);
        assert!(meter.packet(t0 + Duration::from_millis(100), ssrc, 21, 1000).0);
    }

    #[test]
    fn streams_are_bounded() {
        let t0 = Instant::now();
        let mut meter = PublisherMeter::new(1_000_000_000);
        for ssrc in 0..(MAX_STREAMS as u32 + 10) {
            meter.packet(t0, Ssrc::from(ssrc), 1, 10);
        }
        assert_eq!(meter.streams.len(), MAX_STREAMS);
    }
}
