//! What the SFU tells participants about the call besides media and
//! negotiation: active speakers (`speakers_changed`), connection quality
//! (`connection_quality`) and dynacast (`subscribed_quality_update`), and
//! the `subscription` request that changes what a participant receives.
//!
//! The decisions are the pure modules [`crate::speakers`],
//! [`crate::quality`] and [`crate::dynacast`]; this module holds their state
//! per participant and track, feeds them every received RTP packet, and
//! runs them on the SFU's timers (every 400 ms for speakers and dynacast,
//! every 5 s for quality).

use std::collections::HashMap;
use std::time::Instant;

use livekit_protocol as lk;
use lk::signal_response::Message as Resp;
use str0m::media::{MediaKind, Mid};
use str0m::rtp::{RtpPacket, Ssrc};

use super::{ParticipantKey, Sfu, SignalError};
use crate::dynacast::{self, Dynacast};
use crate::quality::{self, LossCounter};
use crate::speakers::{self, AudioLevel};

/// The state behind the room-wide signals.
pub(super) struct Feedback {
    /// Each published audio track's level.
    audio: HashMap<(ParticipantKey, Mid), AudioLevel>,
    /// Each room's speakers at the last evaluation.
    speakers: HashMap<String, Vec<lk::SpeakerInfo>>,
    next_speakers: Instant,
    /// Each received stream's losses, with its loss weight.
    loss: HashMap<(ParticipantKey, Ssrc), (LossCounter, f64)>,
    /// Each participant's smoothed quality score.
    scores: HashMap<ParticipantKey, f64>,
    /// Each room's qualities as last sent.
    qualities_sent: HashMap<String, Vec<(String, lk::ConnectionQuality)>>,
    next_quality: Instant,
    /// Each published video track's dynacast state, and its codec's name
    /// as livekit-client spells it (`vp8`), learnt from its packets.
    dynacast: HashMap<(ParticipantKey, Mid), Dynacast>,
    codecs: HashMap<(ParticipantKey, Mid), String>,
}

impl Feedback {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            audio: HashMap::new(),
            speakers: HashMap::new(),
            next_speakers: now + speakers::UPDATE_INTERVAL,
            loss: HashMap::new(),
            scores: HashMap::new(),
            qualities_sent: HashMap::new(),
            next_quality: now + quality::UPDATE_INTERVAL,
            dynacast: HashMap::new(),
            codecs: HashMap::new(),
        }
    }

    /// When [`Sfu::feedback_tick`] is next due.
    pub(super) fn due(&self) -> Instant {
        self.next_speakers.min(self.next_quality)
    }

    /// Drops a departed participant's state.
    pub(super) fn forget(&mut self, key: ParticipantKey) {
        self.audio.retain(|(k, _), _| *k != key);
        self.loss.retain(|(k, _), _| *k != key);
        self.scores.remove(&key);
        self.dynacast.retain(|(k, _), _| *k != key);
        self.codecs.retain(|(k, _), _| *k != key);
    }
}

impl Sfu {
    /// A packet of a publisher's stream arrived: count it for quality and,
    /// for audio, read its level (RFC 6464 header extension).
    pub(super) fn observe_rtp(&mut self, now: Instant, key: ParticipantKey, packet: &RtpPacket) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let Some(mid) = p.publisher.direct_api().stream_rx(&ssrc).map(|s| s.mid()) else {
            return;
        };
        let Some(kind) = p.tracks.iter().find(|t| t.mid == mid).map(|t| t.kind) else {
            return;
        };
        let weight = match kind {
            MediaKind::Audio => quality::AUDIO_LOSS_WEIGHT,
            MediaKind::Video => quality::VIDEO_LOSS_WEIGHT,
        };
        self.feedback.loss.entry((key, ssrc)).or_insert_with(|| (LossCounter::default(), weight)).0.packet(*packet.seq_no);
        let pt = packet.header.payload_type;
        let Some(spec) = p.publisher.codec_config().find(|c| c.pt() == pt).map(|c| c.spec()) else {
            return;
        };
        match kind {
            MediaKind::Audio => {
                if let Some(level) = packet.header.ext_vals.audio_level {
                    let audio = self.feedback.audio.entry((key, mid)).or_default();
                    audio.observe(level.unsigned_abs(), packet.header.timestamp, spec.clock_rate.get(), now);
                }
            }
            MediaKind::Video => {
                self.feedback.codecs.entry((key, mid)).or_insert_with(|| spec.codec.to_string().to_lowercase());
            }
        }
    }

    /// Runs whichever of the periodic evaluations is due.
    pub(super) fn feedback_tick(&mut self, now: Instant) {
        if now >= self.feedback.next_speakers {
            self.feedback.next_speakers = now + speakers::UPDATE_INTERVAL;
            self.speakers_tick(now);
            self.dynacast_tick(now);
        }
        if now >= self.feedback.next_quality {
            self.feedback.next_quality = now + quality::UPDATE_INTERVAL;
            self.quality_tick();
        }
    }

    /// Sends each room the speakers that changed since the last evaluation.
    fn speakers_tick(&mut self, now: Instant) {
        let rooms: Vec<(String, Vec<ParticipantKey>)> =
            self.rooms.iter().map(|(name, room)| (name.clone(), room.participants.clone())).collect();
        self.feedback.speakers.retain(|room, _| self.rooms.contains_key(room));
        for (room, keys) in rooms {
            let mut levels = Vec::with_capacity(keys.len());
            for key in &keys {
                let Some(p) = self.participants.get(key) else {
                    continue;
                };
                // A participant speaks as loud as its loudest unmuted track.
                let mut loudest = (0.0, false);
                for t in p.tracks.iter().filter(|t| t.kind == MediaKind::Audio && !t.info.muted) {
                    if let Some(audio) = self.feedback.audio.get_mut(&(*key, t.mid)) {
                        let (level, active) = audio.level(now);
                        if level > loudest.0 {
                            loudest = (level, active);
                        }
                    }
                }
                levels.push((p.sid.clone(), loudest.0, loudest.1));
            }
            let current = speakers::active_speakers(levels);
            let previous = self.feedback.speakers.remove(&room).unwrap_or_default();
            let changes = speakers::changes(&previous, &current);
            if !changes.is_empty() {
                for key in &keys {
                    self.signal(*key, Resp::SpeakersChanged(lk::SpeakersChanged { speakers: changes.clone() }));
                }
            }
            if !current.is_empty() {
                self.feedback.speakers.insert(room, current);
            }
        }
    }

    /// Scores each participant's last window and, when a room's qualities
    /// changed (or someone is new), sends every active participant there
    /// the qualities of all active ones.
    fn quality_tick(&mut self) {
        let mut window_scores: HashMap<ParticipantKey, f64> = HashMap::new();
        for ((key, _), (counter, weight)) in self.feedback.loss.iter_mut() {
            if let Some(score) = quality::packet_score(counter.take_window(), *weight) {
                let worst = window_scores.entry(*key).or_insert(score);
                *worst = worst.min(score);
            }
        }
        for key in self.participants.keys() {
            let previous = self.feedback.scores.get(key).copied().unwrap_or(quality::MAX_SCORE);
            self.feedback.scores.insert(*key, quality::smooth(previous, window_scores.get(key).copied()));
        }
        self.feedback.qualities_sent.retain(|room, _| self.rooms.contains_key(room));
        let rooms: Vec<(String, Vec<ParticipantKey>)> =
            self.rooms.iter().map(|(name, room)| (name.clone(), room.participants.clone())).collect();
        for (room, keys) in rooms {
            let active: Vec<(ParticipantKey, String, f64)> = keys
                .iter()
                .filter_map(|k| {
                    let p = self.participants.get(k).filter(|p| p.active)?;
                    Some((*k, p.sid.clone(), self.feedback.scores.get(k).copied().unwrap_or(quality::MAX_SCORE)))
                })
                .collect();
            let current: Vec<(String, lk::ConnectionQuality)> =
                active.iter().map(|(_, sid, score)| (sid.clone(), quality::quality(*score))).collect();
            let previous = self.feedback.qualities_sent.get(&room).map(Vec::as_slice).unwrap_or_default();
            if !quality::changed(previous, &current) {
                self.feedback.qualities_sent.insert(room, current);
                continue;
            }
            let updates: Vec<lk::ConnectionQualityInfo> = active
                .iter()
                .map(|(_, sid, score)| lk::ConnectionQualityInfo {
                    participant_sid: sid.clone(),
                    quality: quality::quality(*score) as i32,
                    score: quality::mos(*score),
                })
                .collect();
            for (key, _, _) in &active {
                self.signal(*key, Resp::ConnectionQuality(lk::ConnectionQualityUpdate { updates: updates.clone() }));
            }
            self.feedback.qualities_sent.insert(room, current);
        }
    }

    /// Tells publishers which qualities of their video tracks are wanted,
    /// when that changed (see [`crate::dynacast`]).
    // `subscribed_qualities` is what livekit-client before codec lists
    // reads; livekit-server still fills it.
    #[allow(deprecated)]
    pub(super) fn dynacast_tick(&mut self, now: Instant) {
        let mut wanted: HashMap<(ParticipantKey, Mid), Vec<usize>> = HashMap::new();
        for s in self.participants.values() {
            for d in s.downtracks.iter().filter(|d| d.kind == MediaKind::Video && !d.removed && !d.disabled) {
                wanted.entry((d.publisher, d.source_mid)).or_default().push(d.quality.unwrap_or(2));
            }
        }
        let mut updates = Vec::new();
        for (key, p) in &self.participants {
            for t in p.tracks.iter().filter(|t| t.kind == MediaKind::Video) {
                let max = dynacast::max_wanted(wanted.remove(&(*key, t.mid)).unwrap_or_default());
                let state = self.feedback.dynacast.entry((*key, t.mid)).or_default();
                if let Some(told) = state.update(max, now) {
                    let codec = self.feedback.codecs.get(&(*key, t.mid)).cloned().unwrap_or_else(|| "vp8".to_owned());
                    let qualities = dynacast::subscribed_qualities(told);
                    updates.push((
                        *key,
                        lk::SubscribedQualityUpdate {
                            track_sid: t.info.sid.clone(),
                            subscribed_qualities: qualities.clone(),
                            subscribed_codecs: vec![lk::SubscribedCodec { codec, qualities }],
                        },
                    ));
                }
            }
        }
        for (key, update) in updates {
            self.signal(key, Resp::SubscribedQualityUpdate(update));
        }
    }

    /// `subscription`: stop receiving the named tracks (their m-lines are
    /// stopped in the next subscriber offer) or receive them again.
    pub(super) fn update_subscription(&mut self, key: ParticipantKey, update: lk::UpdateSubscription) -> Result<(), SignalError> {
        let p = self.participants.get(&key).ok_or(SignalError::UnknownParticipant)?;
        // Bounded by what the room can hold.
        let most = self.config.max_participants_per_room * self.config.max_tracks_per_participant;
        let sids: Vec<String> = update
            .track_sids
            .into_iter()
            .chain(update.participant_tracks.into_iter().flat_map(|t| t.track_sids))
            .take(most)
            .collect();
        let room = p.room.clone();
        let mut changed = false;
        for sid in sids {
            if update.subscribe {
                let found =
                    self.rooms.get(&room).into_iter().flat_map(|r| r.participants.iter()).filter(|k| **k != key).find_map(|k| {
                        let o = self.participants.get(k)?;
                        let t = o.tracks.iter().find(|t| t.info.sid == sid)?;
                        Some((*k, o.sid.clone(), t.mid, t.kind, t.rids.clone()))
                    });
                let Some((publisher, publisher_sid, mid, kind, rids)) = found else {
                    continue;
                };
                changed |= self.subscribe_downtrack(key, publisher, publisher_sid, sid, mid, kind, &rids);
            } else {
                let Some(s) = self.participants.get_mut(&key) else {
                    continue;
                };
                for d in s.downtracks.iter_mut().filter(|d| d.track_sid == sid && !d.removed) {
                    d.removed = true;
                    changed = true;
                }
                s.downtracks.retain(|d| !(d.removed && d.mid.is_none()));
            }
        }
        if changed {
            self.negotiate_subscriber(key);
        }
        Ok(())
    }
}
