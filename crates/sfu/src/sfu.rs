//! The SFU state machine: rooms, participants, their two peer connections,
//! signalling and RTP forwarding. See the crate documentation for the
//! protocol it follows.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Rids};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::forward::{self, Rewriter};

mod data;
mod feedback;
mod meter;

pub use data::{DataRate, MAX_DATA_PACKET_BYTES};

/// Bounds and announced figures of one SFU. Every collection a client can
/// grow is bounded here.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Rooms at once; a join that would open one more is refused.
    pub max_rooms: usize,
    /// Participants in one room.
    pub max_participants_per_room: usize,
    /// Tracks one participant may publish (pending ones included).
    pub max_tracks_per_participant: usize,
    /// Announced to clients, which ping this often.
    pub ping_interval: Duration,
    /// A participant silent on its signal connection this long is removed.
    pub ping_timeout: Duration,
    /// `ServerInfo.version` announced (livekit-client gates a few
    /// behaviours on it; we announce a modern livekit-server's).
    pub server_version: String,
    /// `ServerInfo.node_id`.
    pub node_id: String,
    /// What one participant may send on its data channels.
    pub data_rate: DataRate,
    /// RTP payload bits a second one publisher may send (all its tracks and
    /// layers); packets beyond are not forwarded (see `meter`).
    pub max_publisher_bitrate: u64,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            max_rooms: 256,
            max_participants_per_room: 64,
            max_tracks_per_participant: 8,
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            server_version: "1.9.0".to_owned(),
            node_id: "chancery".to_owned(),
            data_rate: DataRate::default(),
            max_publisher_bitrate: 20_000_000,
        }
    }
}

/// What the access token allows, checked by the host before [`Sfu::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGrant {
    pub room: String,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
}

/// The connection options the client sent (`/rtc` query parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOptions {
    /// Subscribe to every track in the room without asking (`auto_subscribe`,
    /// default on).
    pub auto_subscribe: bool,
    /// The client sends `track_setting` for the video size it shows.
    pub adaptive_stream: bool,
}

impl Default for JoinOptions {
    fn default() -> Self {
        Self { auto_subscribe: true, adaptive_stream: false }
    }
}

/// One participant's session (one signal connection). Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantKey(u64);

/// A datagram to send from one of the SFU's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// What the host does next.
#[derive(Debug, Clone, PartialEq)]
pub enum SfuOutput {
    /// Send this message on the participant's signal connection.
    Signal {
        to: ParticipantKey,
        message: Box<lk::SignalResponse>,
    },
    Transmit(Transmit),
    Event(SfuEvent),
}

/// Changes the host acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    Joined {
        participant: ParticipantKey,
        room: String,
        identity: String,
    },
    /// The participant is gone: the host closes its signal connection (after
    /// sending what was queued before this) and, for a MatrixRTC member,
    /// sends its delayed leave event.
    Left {
        participant: ParticipantKey,
        room: String,
        identity: String,
        reason: LeaveReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client sent `leave`.
    ClientLeft,
    /// The host saw the signal connection close.
    SignalClosed,
    /// No signal message within the ping timeout.
    PingTimeout,
    /// A peer connection failed (ICE disconnected).
    MediaFailed,
    /// The same identity joined the room again.
    DuplicateIdentity,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("too many rooms")]
    TooManyRooms,
    #[error("the room is full")]
    RoomFull,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("no such participant")]
    UnknownParticipant,
    #[error("too many tracks")]
    TooManyTracks,
    #[error("not allowed by the token")]
    NotAllowed,
    #[error("bad session description: {0}")]
    BadSdp(String),
    #[error("an answer without an offer")]
    NoPendingOffer,
    #[error("unknown track")]
    UnknownTrack,
}

/// Figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    pub rooms: usize,
    pub participants: usize,
    /// Tracks published now (media received).
    pub published_tracks: usize,
    /// Tracks forwarded now: one per subscriber and track.
    pub forwarded_tracks: usize,
    /// RTP packets and payload bytes written to subscribers, since start.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Incoming RTP packets known lost (sequence gaps), since start.
    pub packets_lost: u64,
    /// Incoming RTP packets not forwarded because their publisher was over
    /// its bitrate cap, since start.
    pub over_bitrate_packets: u64,
    /// Data channel packets and bytes written to receivers, since start.
    pub data_forwarded_packets: u64,
    pub data_forwarded_bytes: u64,
    /// Data packets dropped: too big, over the sender's rate, undecodable,
    /// or a receiver's channel not open or full.
    pub data_dropped: u64,
}

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Pc {
    Publisher,
    Subscriber,
}

struct Room {
    sid: String,
    created_ms: i64,
    participants: Vec<ParticipantKey>,
}

/// A track announced by `add_track` whose media has not arrived in an offer yet.
struct PendingTrack {
    cid: String,
    info: lk::TrackInfo,
}

struct PublishedTrack {
    info: lk::TrackInfo,
    mid: Mid,
    kind: MediaKind,
    /// Simulcast layers received, empty without simulcast.
    rids: Vec<String>,
}

/// A track forwarded to a subscriber.
struct DownTrack {
    publisher: ParticipantKey,
    publisher_sid: String,
    track_sid: String,
    source_mid: Mid,
    kind: MediaKind,
    /// The subscriber connection's m-line, once added.
    mid: Option<Mid>,
    /// The answer to an offer holding this m-line arrived.
    negotiated: bool,
    /// Being removed: its m-line is stopped in the next offer.
    removed: bool,
    /// Quality asked by `track_setting` (index into `SIMULCAST_RIDS`).
    quality: Option<usize>,
    disabled: bool,
    /// The layer being forwarded, and the one to switch to at its next key frame.
    current_rid: Option<String>,
    target_rid: Option<String>,
    /// Video is held back until a key frame, so a decoder starts clean.
    waiting_keyframe: bool,
    /// When a key frame was last asked for while waiting for one.
    keyframe_asked: Option<Instant>,
    /// When a packet was last forwarded (a layer that stops is left).
    last_forwarded: Option<Instant>,
    rewriter: Rewriter,
    /// Publisher payload type → subscriber payload type.
    pt_map: Vec<(Pt, Pt)>,
}

struct Participant {
    room: String,
    sid: String,
    grant: JoinGrant,
    options: JoinOptions,
    joined_ms: i64,
    version: u32,
    /// The publisher connection came up: the client is ready for offers.
    active: bool,
    /// The subscriber connection is up (ICE and DTLS): packets written
    /// before it would be lost, so forwarding waits for it.
    subscriber_connected: bool,
    publisher: Rtc,
    subscriber: Rtc,
    publisher_timeout: Instant,
    subscriber_timeout: Instant,
    pending_tracks: Vec<PendingTrack>,
    tracks: Vec<PublishedTrack>,
    downtracks: Vec<DownTrack>,
    pending_offer: Option<(u32, SdpPendingOffer)>,
    renegotiate: bool,
    next_offer_id: u32,
    last_signal: Instant,
    data: data::DataChannels,
    meter: meter::PublisherMeter,
}

impl Participant {
    fn rtc(&mut self, pc: Pc) -> &mut Rtc {
        match pc {
            Pc::Publisher => &mut self.publisher,
            Pc::Subscriber => &mut self.subscriber,
        }
    }

    fn info(&self) -> lk::ParticipantInfo {
        let state = if self.active { lk::participant_info::State::Active } else { lk::participant_info::State::Joined };
        lk::ParticipantInfo {
            sid: self.sid.clone(),
            identity: self.grant.identity.clone(),
            name: self.grant.name.clone(),
            metadata: self.grant.metadata.clone(),
            state: state as i32,
            tracks: self.tracks.iter().map(|t| t.info.clone()).collect(),
            joined_at: self.joined_ms / 1000,
            joined_at_ms: self.joined_ms,
            version: self.version,
            permission: Some(lk::ParticipantPermission {
                can_subscribe: self.grant.can_subscribe,
                can_publish: self.grant.can_publish,
                can_publish_data: self.grant.can_publish_data,
                ..Default::default()
            }),
            is_publisher: !self.tracks.is_empty(),
            ..Default::default()
        }
    }
}

/// The SFU. See the crate documentation.
pub struct Sfu {
    config: SfuConfig,
    /// Host candidates announced in every SDP: the UDP socket's public address(es).
    candidates: Vec<SocketAddr>,
    rooms: BTreeMap<String, Room>,
    participants: BTreeMap<ParticipantKey, Participant>,
    /// Which connection a remote address belongs to, learnt from `accepts`.
    routes: HashMap<SocketAddr, (ParticipantKey, Pc)>,
    /// Connections with work to poll before the next input.
    dirty: BTreeSet<(ParticipantKey, Pc)>,
    outputs: VecDeque<SfuOutput>,
    next_key: u64,
    id_seed: u64,
    /// Wall-clock anchor: `unix_ms` at `anchor`, for timestamps clients see.
    anchor: Instant,
    anchor_unix_ms: i64,
    forwarded_packets: u64,
    forwarded_bytes: u64,
    /// Speakers, connection quality and dynacast (see `feedback`).
    feedback: feedback::Feedback,
    packets_lost: u64,
    over_bitrate_packets: u64,
    data_forwarded_packets: u64,
    data_forwarded_bytes: u64,
    data_dropped: u64,
}

impl Sfu {
    /// A new SFU announcing `candidates` (the addresses its UDP socket
    /// receives on, as clients reach them). `id_seed` makes participant,
    /// track and room ids unpredictable (the host draws it from its entropy);
    /// `unix_ms` is the wall-clock time at `now`.
    pub fn new(config: SfuConfig, candidates: Vec<SocketAddr>, id_seed: u64, now: Instant, unix_ms: i64) -> Self {
        Self {
            config,
            candidates,
            rooms: BTreeMap::new(),
            participants: BTreeMap::new(),
            routes: HashMap::new(),
            dirty: BTreeSet::new(),
            outputs: VecDeque::new(),
            next_key: 1,
            id_seed,
            anchor: now,
            anchor_unix_ms: unix_ms,
            forwarded_packets: 0,
            forwarded_bytes: 0,
            feedback: feedback::Feedback::new(now),
            packets_lost: 0,
            over_bitrate_packets: 0,
            data_forwarded_packets: 0,
            data_forwarded_bytes: 0,
            data_dropped: 0,
        }
    }

    pub fn stats(&self) -> SfuStats {
        SfuStats {
            rooms: self.rooms.len(),
            participants: self.participants.len(),
            published_tracks: self.participants.values().map(|p| p.tracks.len()).sum(),
            forwarded_tracks: self.participants.values().map(|p| p.downtracks.iter().filter(|d| !d.removed).count()).sum(),
            forwarded_packets: self.forwarded_packets,
            forwarded_bytes: self.forwarded_bytes,
            packets_lost: self.packets_lost,
            over_bitrate_packets: self.over_bitrate_packets,
            data_forwarded_packets: self.data_forwarded_packets,
            data_forwarded_bytes: self.data_forwarded_bytes,
            data_dropped: self.data_dropped,
        }
    }

    /// Entries of the SFU's internal maps (tests check teardown leaves none).
    #[cfg(test)]
    pub(crate) fn held_entries(&self) -> usize {
        self.rooms.len() + self.participants.len() + self.routes.len() + self.dirty.len()
    }

    /// Every participant's room and identity (the host resynchronises
    /// its view of who is present with it after missing events).
    pub fn present(&self) -> Vec<(String, String)> {
        self.participants.values().map(|p| (p.room.clone(), p.grant.identity.clone())).collect()
    }

    /// The participant's `sid` as clients see it (`PA_…`).
    pub fn participant_sid(&self, key: ParticipantKey) -> Option<&str> {
        self.participants.get(&key).map(|p| p.sid.as_str())
    }

    fn unix_ms(&self, now: Instant) -> i64 {
        self.anchor_unix_ms + now.saturating_duration_since(self.anchor).as_millis() as i64
    }

    /// A fresh id with LiveKit's prefix (`PA_`, `TR_`, `RM_`): 12 characters
    /// of a splitmix64 stream over the seed, unique within this SFU.
    fn new_sid(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        self.next_key += 1;
        let mut z = self.id_seed.wrapping_add(self.next_key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let mut out = String::with_capacity(prefix.len() + 12);
        out.push_str(prefix);
        for _ in 0..10 {
            out.push(ALPHABET[(z % ALPHABET.len() as u64) as usize] as char);
            z /= ALPHABET.len() as u64;
        }
        // The counter keeps ids unique even if two hashes collided.
        out.push_str(&format!("{:x}", self.next_key));
        out
    }

    fn new_rtc(&self, now: Instant) -> Rtc {
        let mut rtc = Rtc::builder().set_ice_lite(true).set_rtp_mode(true).build(now);
        for addr in &self.candidates {
            if let Ok(candidate) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(candidate);
            }
        }
        rtc
    }

    /// Admits a participant whose token the host validated. Queues its
    /// `JoinResponse` (always its first message) and tells the room.
    pub fn join(&mut self, now: Instant, grant: JoinGrant, options: JoinOptions) -> Result<ParticipantKey, JoinError> {
        // A second session of one identity replaces the first, as in LiveKit.
        if let Some(room) = self.rooms.get(&grant.room) {
            let old: Vec<ParticipantKey> = room
                .participants
                .iter()
                .copied()
                .filter(|k| self.participants.get(k).is_some_and(|p| p.grant.identity == grant.identity))
                .collect();
            for key in old {
                self.remove(now, key, LeaveReason::DuplicateIdentity);
            }
        }
        match self.rooms.get(&grant.room) {
            Some(room) if room.participants.len() >= self.config.max_participants_per_room => {
                return Err(JoinError::RoomFull);
            }
            None if self.rooms.len() >= self.config.max_rooms => return Err(JoinError::TooManyRooms),
            _ => {}
        }
        if !self.rooms.contains_key(&grant.room) {
            let sid = self.new_sid("RM_");
            let created_ms = self.unix_ms(now);
            self.rooms.insert(grant.room.clone(), Room { sid, created_ms, participants: Vec::new() });
        }
        self.next_key += 1;
        let key = ParticipantKey(self.next_key);
        let sid = self.new_sid("PA_");
        let participant = Participant {
            room: grant.room.clone(),
            sid,
            grant: grant.clone(),
            options,
            joined_ms: self.unix_ms(now),
            version: 1,
            active: false,
            subscriber_connected: false,
            publisher: self.new_rtc(now),
            subscriber: self.new_rtc(now),
            publisher_timeout: now,
            subscriber_timeout: now,
            pending_tracks: Vec::new(),
            tracks: Vec::new(),
            downtracks: Vec::new(),
            pending_offer: None,
            renegotiate: false,
            next_offer_id: 1,
            last_signal: now,
            data: data::DataChannels::new(self.config.data_rate),
            meter: meter::PublisherMeter::new(self.config.max_publisher_bitrate),
        };
        let info = participant.info();
        self.participants.insert(key, participant);
        let room = self.rooms.get_mut(&grant.room).expect("room inserted above");
        room.participants.push(key);
        let others: Vec<ParticipantKey> = room.participants.iter().copied().filter(|k| *k != key).collect();
        let room_info = lk::Room {
            sid: room.sid.clone(),
            name: grant.room.clone(),
            max_participants: self.config.max_participants_per_room as u32,
            creation_time: room.created_ms / 1000,
            creation_time_ms: room.created_ms,
            num_participants: room.participants.len() as u32,
            ..Default::default()
        };
        let join = lk::JoinResponse {
            room: Some(room_info),
            participant: Some(info.clone()),
            other_participants: others.iter().filter_map(|k| self.participants.get(k).map(Participant::info)).collect(),
            server_version: self.config.server_version.clone(),
            ice_servers: Vec::new(),
            subscriber_primary: false,
            ping_timeout: self.config.ping_timeout.as_secs() as i32,
            ping_interval: self.config.ping_interval.as_secs() as i32,
            server_info: Some(lk::ServerInfo {
                edition: lk::server_info::Edition::Standard as i32,
                version: self.config.server_version.clone(),
                protocol: 16,
                node_id: self.config.node_id.clone(),
                ..Default::default()
            }),
            fast_publish: grant.can_publish,
            ..Default::default()
        };
        self.signal(key, Resp::Join(join));
        for other in &others {
            self.signal(*other, Resp::Update(lk::ParticipantUpdate { participants: vec![info.clone()] }));
        }
        self.outputs.push_back(SfuOutput::Event(SfuEvent::Joined {
            participant: key,
            room: grant.room,
            identity: grant.identity,
        }));
        self.dirty.insert((key, Pc::Publisher));
        self.dirty.insert((key, Pc::Subscriber));
        self.flush(now);
        Ok(key)
    }

    /// The host saw the participant's signal connection close.
    pub fn disconnect(&mut self, now: Instant, key: ParticipantKey) {
        self.remove(now, key, LeaveReason::SignalClosed);
        self.flush(now);
    }

    /// A message from the participant's signal connection.
    pub fn handle_signal(&mut self, now: Instant, key: ParticipantKey, request: lk::SignalRequest) -> Result<(), SignalError> {
        let participant = self.participants.get_mut(&key).ok_or(SignalError::UnknownParticipant)?;
        participant.last_signal = now;
        let result = match request.message {
            Some(Req::PingReq(ping)) => {
                let pong = lk::Pong { last_ping_timestamp: ping.timestamp, timestamp: self.unix_ms(now) };
                self.signal(key, Resp::PongResp(pong));
                Ok(())
            }
            Some(Req::Ping(timestamp)) => {
                self.signal(key, Resp::Pong(timestamp));
                Ok(())
            }
            Some(Req::AddTrack(add)) => self.add_track(key, add),
            Some(Req::Offer(offer)) => self.publisher_offer(now, key, offer),
            Some(Req::Answer(answer)) => self.subscriber_answer(now, key, answer),
            Some(Req::Trickle(trickle)) => {
                self.trickle(key, trickle);
                Ok(())
            }
            Some(Req::Mute(mute)) => self.mute(key, mute),
            Some(Req::TrackSetting(setting)) => {
                self.track_setting(now, key, setting);
                self.dynacast_tick(now);
                Ok(())
            }
            Some(Req::Subscription(update)) => {
                let result = self.update_subscription(key, update);
                self.dynacast_tick(now);
                result
            }
            Some(Req::Leave(_)) => {
                self.remove(now, key, LeaveReason::ClientLeft);
                Ok(())
            }
            // Other requests (metadata updates, data tracks, ...) are not
            // served yet; they change nothing.
            _ => Ok(()),
        };
        self.flush(now);
        result
    }

    /// A datagram received on the SFU's UDP socket at `destination` (one of
    /// the announced candidates).
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, contents: &[u8]) {
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, contents) else {
            return;
        };
        let input = Input::Receive(now, receive);
        let mut target = self
            .routes
            .get(&source)
            .copied()
            .filter(|(key, pc)| self.participants.get_mut(key).is_some_and(|p| p.rtc(*pc).accepts(&input)));
        if target.is_none() {
            target = self.participants.iter_mut().find_map(|(key, p)| {
                [Pc::Publisher, Pc::Subscriber].into_iter().find(|pc| p.rtc(*pc).accepts(&input)).map(|pc| (*key, pc))
            });
            if let Some(route) = target {
                self.routes.insert(source, route);
            }
        }
        let Some((key, pc)) = target else {
            return;
        };
        if let Some(p) = self.participants.get_mut(&key) {
            if p.rtc(pc).handle_input(input).is_err() {
                self.remove(now, key, LeaveReason::MediaFailed);
            } else {
                // At once, not via `dirty`: the packet just received must be
                // taken out before the next datagram comes in.
                self.dirty.remove(&(key, pc));
                self.poll_connection(now, key, pc);
            }
        }
        self.flush(now);
    }

    /// Drives timers: str0m's (retransmissions, RTCP, ICE) and the ping timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let silent: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_signal) > self.config.ping_timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in silent {
            self.remove(now, key, LeaveReason::PingTimeout);
        }
        let mut failed = Vec::new();
        for (key, p) in self.participants.iter_mut() {
            for pc in [Pc::Publisher, Pc::Subscriber] {
                let due = match pc {
                    Pc::Publisher => p.publisher_timeout,
                    Pc::Subscriber => p.subscriber_timeout,
                };
                if due <= now {
                    if p.rtc(pc).handle_input(Input::Timeout(now)).is_err() {
                        failed.push(*key);
                    }
                    self.dirty.insert((*key, pc));
                }
            }
        }
        for key in failed {
            self.remove(now, key, LeaveReason::MediaFailed);
        }
        self.feedback_tick(now);
        self.flush(now);
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<SfuOutput> {
        self.outputs.pop_front()
    }

    /// When [`Sfu::handle_timeout`] is next due: the earliest of the peer
    /// connections' timers, the ping deadlines and, while anyone is here,
    /// the periodic speaker, quality and dynacast evaluations.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.participants
            .values()
            .flat_map(|p| [p.publisher_timeout, p.subscriber_timeout, p.last_signal + self.config.ping_timeout])
            .min()
            .map(|at| at.min(self.feedback.due()))
    }

    fn signal(&mut self, to: ParticipantKey, message: Resp) {
        self.outputs.push_back(SfuOutput::Signal { to, message: Box::new(lk::SignalResponse { message: Some(message) }) });
    }

    // livekit-client still reads `TrackInfo.layers` and `simulcast`.
    #[allow(deprecated)]
    fn add_track(&mut self, key: ParticipantKey, add: lk::AddTrackRequest) -> Result<(), SignalError> {
        let max_tracks = self.config.max_tracks_per_participant;
        let p = self.participants.get(&key).ok_or(SignalError::UnknownParticipant)?;
        if !p.grant.can_publish {
            return Err(SignalError::NotAllowed);
        }
        if p.pending_tracks.len() + p.tracks.len() >= max_tracks {
            return Err(SignalError::TooManyTracks);
        }
        let sid = self.new_sid("TR_");
        let layers_simulcast = add.layers.len() > 1 || !add.simulcast_codecs.is_empty();
        let info = lk::TrackInfo {
            sid,
            r#type: add.r#type,
            name: add.name.clone(),
            muted: add.muted,
            width: add.width,
            height: add.height,
            simulcast: layers_simulcast,
            disable_dtx: add.disable_dtx,
            source: add.source,
            layers: add.layers.clone(),
            stereo: add.stereo,
            disable_red: add.disable_red,
            encryption: add.encryption,
            stream: add.stream.clone(),
            ..Default::default()
        };
        let p = self.participants.get_mut(&key).ok_or(SignalError::UnknownParticipant)?;
        p.pending_tracks.push(PendingTrack { cid: add.cid.clone(), info: info.clone() });
        self.signal(key, Resp::TrackPublished(lk::TrackPublishedResponse { cid: add.cid, track: Some(info) }));
        Ok(())
    }

    fn publisher_offer(&mut self, now: Instant, key: ParticipantKey, offer: lk::SessionDescription) -> Result<(), SignalError> {
        let p = self.participants.get_mut(&key).ok_or(SignalError::UnknownParticipant)?;
        let sdp = SdpOffer::from_sdp_string(&offer.sdp).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        let answer = p.publisher.sdp_api().accept_offer(sdp).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        // str0m reports new m-lines (`MediaAdded`) only once DTLS is up,
        // but the answer must already map them to tracks: read the offer's
        // mids and look each one up.
        let mids: Vec<Mid> =
            offer.sdp.lines().filter_map(|l| l.trim().strip_prefix("a=mid:")).map(|m| Mid::from(m.trim())).collect();
        for mid in mids {
            self.media_added(key, mid);
        }
        self.dirty.insert((key, Pc::Publisher));
        self.flush(now);
        let p = self.participants.get(&key).ok_or(SignalError::UnknownParticipant)?;
        let mid_to_track_id = p.tracks.iter().map(|t| (t.mid.to_string(), t.info.sid.clone())).collect();
        self.signal(
            key,
            Resp::Answer(lk::SessionDescription {
                r#type: "answer".to_owned(),
                sdp: answer.to_sdp_string(),
                id: offer.id,
                mid_to_track_id,
            }),
        );
        Ok(())
    }

    fn subscriber_answer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        answer: lk::SessionDescription,
    ) -> Result<(), SignalError> {
        let p = self.participants.get_mut(&key).ok_or(SignalError::UnknownParticipant)?;
        let Some((_, pending)) = p.pending_offer.take() else {
            return Err(SignalError::NoPendingOffer);
        };
        let sdp = SdpAnswer::from_sdp_string(&answer.sdp).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        p.subscriber.sdp_api().accept_answer(pending, sdp).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        p.downtracks.retain(|d| !d.removed);
        let mut wants_keyframe = Vec::new();
        for d in p.downtracks.iter_mut().filter(|d| d.mid.is_some() && !d.negotiated) {
            d.negotiated = true;
            wants_keyframe.push((d.publisher, d.source_mid, d.target_rid.clone()));
        }
        let again = std::mem::take(&mut p.renegotiate);
        self.dirty.insert((key, Pc::Subscriber));
        for (publisher, mid, rid) in wants_keyframe {
            self.request_keyframe(publisher, mid, rid.as_deref());
        }
        if again {
            self.negotiate_subscriber(key);
        }
        let _ = now;
        Ok(())
    }

    fn trickle(&mut self, key: ParticipantKey, trickle: lk::TrickleRequest) {
        #[derive(serde::Deserialize)]
        struct CandidateInit {
            #[serde(default)]
            candidate: String,
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Ok(init) = serde_json::from_str::<CandidateInit>(&trickle.candidate_init) else {
            return;
        };
        let line = init.candidate.trim();
        if line.is_empty() {
            return; // end of candidates
        }
        // mDNS host names (`….local`) do not parse and are not needed: an
        // ICE-lite agent learns the address from the browser's checks.
        let Ok(candidate) = Candidate::from_sdp_string(line) else {
            return;
        };
        let pc = if trickle.target == lk::SignalTarget::Subscriber as i32 { Pc::Subscriber } else { Pc::Publisher };
        p.rtc(pc).add_remote_candidate(candidate);
        self.dirty.insert((key, pc));
    }

    fn mute(&mut self, key: ParticipantKey, mute: lk::MuteTrackRequest) -> Result<(), SignalError> {
        let p = self.participants.get_mut(&key).ok_or(SignalError::UnknownParticipant)?;
        let track = p
            .tracks
            .iter_mut()
            .map(|t| &mut t.info)
            .chain(p.pending_tracks.iter_mut().map(|t| &mut t.info))
            .find(|t| t.sid == mute.sid)
            .ok_or(SignalError::UnknownTrack)?;
        if track.muted != mute.muted {
            track.muted = mute.muted;
            self.broadcast_update(key);
        }
        Ok(())
    }

    // livekit-client still reads `TrackInfo.layers` and `simulcast`.
    #[allow(deprecated)]
    fn track_setting(&mut self, now: Instant, key: ParticipantKey, setting: lk::UpdateTrackSettings) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let quality = match lk::VideoQuality::try_from(setting.quality) {
            Ok(lk::VideoQuality::Low) => Some(0),
            Ok(lk::VideoQuality::Medium) => Some(1),
            _ => Some(2),
        };
        let mut changed = Vec::new();
        for d in p.downtracks.iter_mut().filter(|d| setting.track_sids.contains(&d.track_sid)) {
            d.disabled = setting.disabled;
            // A requested size wins over the quality: the smallest layer
            // at least that wide, judged from the publisher's announced layers.
            d.quality = quality;
            changed.push((d.publisher, d.track_sid.clone(), setting.width, setting.height));
        }
        let _ = now;
        for (publisher, track_sid, width, height) in changed {
            let Some(track) = self.participants.get(&publisher).and_then(|p| p.tracks.iter().find(|t| t.info.sid == track_sid))
            else {
                continue;
            };
            let rids: Vec<&str> = track.rids.iter().map(String::as_str).collect();
            let quality = if width > 0 || height > 0 {
                let fitting = track
                    .info
                    .layers
                    .iter()
                    .filter(|l| l.width >= width && l.height >= height)
                    .min_by_key(|l| l.width)
                    .map(|l| l.quality as usize);
                Some(fitting.unwrap_or(2).min(2))
            } else {
                quality
            };
            let target = forward::choose_rid(&rids, quality).map(str::to_owned);
            let source_mid = track.mid;
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            let mut ask = None;
            for d in p.downtracks.iter_mut().filter(|d| d.track_sid == track_sid) {
                d.quality = quality;
                if d.target_rid != target {
                    d.target_rid = target.clone();
                    ask = Some(target.clone());
                }
            }
            if let Some(rid) = ask {
                self.request_keyframe(publisher, source_mid, rid.as_deref());
            }
        }
    }

    /// Sends the participant's current info to everyone else in its room.
    fn broadcast_update(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        p.version += 1;
        let info = p.info();
        let others = self.room_others(key);
        for other in others {
            self.signal(other, Resp::Update(lk::ParticipantUpdate { participants: vec![info.clone()] }));
        }
    }

    fn room_others(&self, key: ParticipantKey) -> Vec<ParticipantKey> {
        self.participants
            .get(&key)
            .and_then(|p| self.rooms.get(&p.room))
            .map(|r| r.participants.iter().copied().filter(|k| *k != key).collect())
            .unwrap_or_default()
    }

    /// Removes a participant, tells the room, and stops forwarding its tracks.
    fn remove(&mut self, now: Instant, key: ParticipantKey, reason: LeaveReason) {
        let others = self.room_others(key);
        let Some(mut p) = self.participants.remove(&key) else {
            return;
        };
        p.publisher.disconnect();
        p.subscriber.disconnect();
        self.routes.retain(|_, (k, _)| *k != key);
        self.dirty.retain(|(k, _)| *k != key);
        self.feedback.forget(key);
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.participants.retain(|k| *k != key);
            if room.participants.is_empty() {
                self.rooms.remove(&p.room);
            }
        }
        if reason != LeaveReason::ClientLeft && reason != LeaveReason::SignalClosed {
            let why = match reason {
                LeaveReason::DuplicateIdentity => lk::DisconnectReason::DuplicateIdentity,
                LeaveReason::MediaFailed => lk::DisconnectReason::StateMismatch,
                _ => lk::DisconnectReason::SignalClose,
            };
            self.signal(
                key,
                Resp::Leave(lk::LeaveRequest {
                    reason: why as i32,
                    action: lk::leave_request::Action::Disconnect as i32,
                    ..Default::default()
                }),
            );
        }
        p.version += 1;
        let mut info = p.info();
        info.state = lk::participant_info::State::Disconnected as i32;
        info.disconnect_reason = match reason {
            LeaveReason::ClientLeft | LeaveReason::SignalClosed => lk::DisconnectReason::ClientInitiated,
            LeaveReason::DuplicateIdentity => lk::DisconnectReason::DuplicateIdentity,
            LeaveReason::PingTimeout => lk::DisconnectReason::SignalClose,
            LeaveReason::MediaFailed => lk::DisconnectReason::StateMismatch,
        } as i32;
        for other in others {
            self.signal(other, Resp::Update(lk::ParticipantUpdate { participants: vec![info.clone()] }));
            let Some(o) = self.participants.get_mut(&other) else {
                continue;
            };
            let mut any = false;
            for d in o.downtracks.iter_mut().filter(|d| d.publisher == key) {
                d.removed = true;
                any = true;
            }
            // Tracks never offered can simply go.
            o.downtracks.retain(|d| !(d.removed && d.mid.is_none()));
            if any {
                self.negotiate_subscriber(other);
            }
        }
        self.outputs.push_back(SfuOutput::Event(SfuEvent::Left {
            participant: key,
            room: p.room,
            identity: p.grant.identity,
            reason,
        }));
        let _ = now;
    }

    /// Polls every connection marked dirty until each is idle, handling its
    /// events (which may mark others dirty: forwarding writes into
    /// subscribers). Bounded: what is left stays dirty, and `poll_timeout`
    /// is then due at once.
    fn flush(&mut self, now: Instant) {
        let budget = 4 * (self.participants.len() * 2 + 1);
        for _ in 0..budget {
            let Some((key, pc)) = self.dirty.pop_first() else {
                break;
            };
            self.poll_connection(now, key, pc);
        }
        if !self.dirty.is_empty() {
            for p in self.participants.values_mut() {
                p.publisher_timeout = p.publisher_timeout.min(now);
            }
        }
    }

    /// Polls one connection until it waits, queueing its datagrams and
    /// handling its events.
    ///
    /// Must run after every `Input::Receive`, before the connection's next
    /// input: in RTP mode str0m keeps a received packet in a single slot
    /// until `poll_output` hands it out as `Event::RtpPacket`, so a second
    /// datagram handed in first would overwrite (lose) it.
    fn poll_connection(&mut self, now: Instant, key: ParticipantKey, pc: Pc) {
        let mut events = Vec::new();
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        // str0m only does work once woken by an input: API calls
        // (an accepted offer, a written packet) wait for the next one.
        let mut failed = p.rtc(pc).handle_input(Input::Timeout(now)).is_err();
        let mut idle = failed;
        // A connection yields at most a bounded burst per poll round; one
        // not idle after it stays dirty.
        for _ in 0..if failed { 0 } else { 10_000 } {
            match p.rtc(pc).poll_output() {
                Ok(Output::Timeout(at)) => {
                    match pc {
                        Pc::Publisher => p.publisher_timeout = at,
                        Pc::Subscriber => p.subscriber_timeout = at,
                    }
                    idle = true;
                    break;
                }
                Ok(Output::Transmit(t)) => self.outputs.push_back(SfuOutput::Transmit(Transmit {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.into(),
                })),
                Ok(Output::Event(event)) => events.push(event),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.remove(now, key, LeaveReason::MediaFailed);
            return;
        }
        if !idle {
            self.dirty.insert((key, pc));
        }
        for event in events {
            self.handle_event(now, key, pc, event);
        }
    }

    fn handle_event(&mut self, now: Instant, key: ParticipantKey, pc: Pc, event: Event) {
        match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.remove(now, key, LeaveReason::MediaFailed);
            }
            Event::Connected if pc == Pc::Publisher => self.activate(key),
            Event::Connected => self.subscriber_up(key),
            Event::RtpPacket(packet) if pc == Pc::Publisher => {
                self.observe_rtp(now, key, &packet);
                self.forward(now, key, packet);
            }
            Event::ChannelOpen(id, label) => self.channel_open(key, pc, id, &label),
            Event::ChannelData(data) if pc == Pc::Publisher => self.data_received(now, key, data),
            Event::ChannelClose(id) => self.channel_closed(key, pc, id),
            Event::KeyframeRequest(request) if pc == Pc::Subscriber => {
                let Some(d) = self.participants.get(&key).and_then(|p| p.downtracks.iter().find(|d| d.mid == Some(request.mid)))
                else {
                    return;
                };
                let (publisher, mid, rid) = (d.publisher, d.source_mid, d.current_rid.clone());
                self.request_keyframe(publisher, mid, rid.as_deref());
            }
            _ => {}
        }
    }

    /// The publisher connection is up: the client can take offers now, so
    /// subscribe it to what is already published.
    fn activate(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.active {
            return;
        }
        p.active = true;
        self.broadcast_update(key);
        let others = self.room_others(key);
        for other in others {
            let tracks: Vec<(String, String, Mid, MediaKind, Vec<String>)> = match self.participants.get(&other) {
                Some(o) => o.tracks.iter().map(|t| (o.sid.clone(), t.info.sid.clone(), t.mid, t.kind, t.rids.clone())).collect(),
                None => continue,
            };
            for (publisher_sid, track_sid, mid, kind, rids) in tracks {
                self.add_downtrack(key, other, publisher_sid, track_sid, mid, kind, &rids);
            }
        }
        // Offered even with no track to forward: it carries the data
        // channels, which livekit-client expects on its subscriber
        // connection (livekit-server offers them at once too).
        self.negotiate_subscriber(key);
    }

    /// The subscriber connection is up: forwarding to it starts, at a key
    /// frame asked of each publisher now (the one asked at negotiation may
    /// have gone by before the connection could carry it).
    fn subscriber_up(&mut self, key: ParticipantKey) {
        let Some(s) = self.participants.get_mut(&key) else {
            return;
        };
        s.subscriber_connected = true;
        let wanted: Vec<(ParticipantKey, Mid, Option<String>)> = s
            .downtracks
            .iter()
            .filter(|d| d.negotiated && !d.removed && d.kind == MediaKind::Video)
            .map(|d| (d.publisher, d.source_mid, d.target_rid.clone()))
            .collect();
        for (publisher, mid, rid) in wanted {
            self.request_keyframe(publisher, mid, rid.as_deref());
        }
    }

    /// Adds a forwarded track to `subscriber` when it may and wants to
    /// receive it (it subscribes automatically). Returns whether one was added.
    #[allow(clippy::too_many_arguments)]
    fn add_downtrack(
        &mut self,
        subscriber: ParticipantKey,
        publisher: ParticipantKey,
        publisher_sid: String,
        track_sid: String,
        source_mid: Mid,
        kind: MediaKind,
        rids: &[String],
    ) -> bool {
        if !self.participants.get(&subscriber).is_some_and(|s| s.options.auto_subscribe) {
            return false;
        }
        self.subscribe_downtrack(subscriber, publisher, publisher_sid, track_sid, source_mid, kind, rids)
    }

    /// Adds a forwarded track to `subscriber` when it may receive it and
    /// does not already. Returns whether one was added.
    #[allow(clippy::too_many_arguments)]
    fn subscribe_downtrack(
        &mut self,
        subscriber: ParticipantKey,
        publisher: ParticipantKey,
        publisher_sid: String,
        track_sid: String,
        source_mid: Mid,
        kind: MediaKind,
        rids: &[String],
    ) -> bool {
        let Some(s) = self.participants.get_mut(&subscriber) else {
            return false;
        };
        if !s.active || !s.grant.can_subscribe {
            return false;
        }
        if s.downtracks.iter().any(|d| d.track_sid == track_sid && !d.removed) {
            return false;
        }
        let rid_refs: Vec<&str> = rids.iter().map(String::as_str).collect();
        let target = forward::choose_rid(&rid_refs, None).map(str::to_owned);
        s.downtracks.push(DownTrack {
            publisher,
            publisher_sid,
            track_sid,
            source_mid,
            kind,
            mid: None,
            negotiated: false,
            removed: false,
            quality: None,
            disabled: false,
            current_rid: None,
            target_rid: target,
            waiting_keyframe: kind == MediaKind::Video,
            keyframe_asked: None,
            last_forwarded: None,
            rewriter: Rewriter::default(),
            pt_map: Vec::new(),
        });
        true
    }

    /// Offers the subscriber connection's changes (added and stopped
    /// m-lines), or remembers to once the offer in flight is answered.
    fn negotiate_subscriber(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.pending_offer.is_some() {
            p.renegotiate = true;
            return;
        }
        let mut api = p.subscriber.sdp_api();
        p.data.add_to_offer(&mut api);
        for d in p.downtracks.iter_mut() {
            if d.removed {
                if let Some(mid) = d.mid {
                    api.stop_media(mid);
                }
            } else if d.mid.is_none() {
                let stream_id = format!("{}|{}", d.publisher_sid, d.track_sid);
                d.mid = Some(api.add_media(d.kind, Direction::SendOnly, Some(stream_id), Some(d.track_sid.clone()), None));
            }
        }
        let Some((offer, pending)) = api.apply() else {
            p.downtracks.retain(|d| !d.removed);
            return;
        };
        let id = p.next_offer_id;
        p.next_offer_id += 1;
        p.pending_offer = Some((id, pending));
        let mid_to_track_id = p
            .downtracks
            .iter()
            .filter(|d| !d.removed)
            .filter_map(|d| d.mid.map(|m| (m.to_string(), d.track_sid.clone())))
            .collect();
        self.dirty.insert((key, Pc::Subscriber));
        self.signal(
            key,
            Resp::Offer(lk::SessionDescription { r#type: "offer".to_owned(), sdp: offer.to_sdp_string(), id, mid_to_track_id }),
        );
    }

    /// A new m-line in a publisher's offer: it carries the pending track whose
    /// `cid` is its msid track id (or, failing that, the oldest pending track
    /// of its kind). The track is then published to the room.
    // livekit-client still reads `TrackInfo.layers` and `simulcast`.
    #[allow(deprecated)]
    fn media_added(&mut self, key: ParticipantKey, mid: Mid) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.tracks.iter().any(|t| t.mid == mid) {
            return;
        }
        let Some(media) = p.publisher.media(mid) else {
            return; // the data channel's m-line
        };
        // The client's recv-only placeholders carry nothing to forward.
        if !matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) {
            return;
        }
        let kind = media.kind();
        let msid_track = media.track_id().to_owned();
        let mut rids: Vec<String> = match media.rids_rx() {
            Rids::Specific(rids) => rids.iter().map(|r| r.to_string()).collect(),
            _ => Vec::new(),
        };
        let kind_type = match kind {
            MediaKind::Audio => lk::TrackType::Audio,
            MediaKind::Video => lk::TrackType::Video,
        } as i32;
        let index = p
            .pending_tracks
            .iter()
            .position(|t| t.cid == msid_track)
            .or_else(|| p.pending_tracks.iter().position(|t| t.info.r#type == kind_type));
        let Some(index) = index else {
            return;
        };
        let pending = p.pending_tracks.remove(index);
        rids.sort();
        rids.dedup();
        let mut info = pending.info;
        info.mid = mid.to_string();
        info.simulcast = info.simulcast || rids.len() > 1;
        let publisher_sid = p.sid.clone();
        let track_sid = info.sid.clone();
        p.tracks.push(PublishedTrack { info, mid, kind, rids: rids.clone() });
        self.broadcast_update(key);
        for other in self.room_others(key) {
            if self.add_downtrack(other, key, publisher_sid.clone(), track_sid.clone(), mid, kind, &rids) {
                self.negotiate_subscriber(other);
            }
        }
    }

    fn request_keyframe(&mut self, publisher: ParticipantKey, mid: Mid, rid: Option<&str>) {
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let rid: Option<Rid> = rid.map(Rid::from);
        let mut api = p.publisher.direct_api();
        if let Some(stream) = api.stream_rx_by_mid(mid, rid) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
            self.dirty.insert((publisher, Pc::Publisher));
        }
    }

    /// Forwards one packet of a publisher's track to each subscriber of it.
    fn forward(&mut self, now: Instant, publisher: ParticipantKey, packet: RtpPacket) {
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let Some((mid, rid)) = p.publisher.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else {
            return;
        };
        let pt = packet.header.payload_type;
        let Some(params) = p.publisher.codec_config().find(|c| c.pt() == pt).cloned() else {
            return;
        };
        let (within_cap, lost) = p.meter.packet(now, ssrc, *packet.seq_no, packet.payload.len());
        self.packets_lost += lost;
        if !within_cap {
            self.over_bitrate_packets += 1;
            return;
        }
        let rid = rid.map(|r| r.to_string());
        let is_keyframe = params.spec().codec == Codec::Vp8 && forward::vp8_is_keyframe(&packet.payload);
        // Audio: 20 ms at 48 kHz; video: one frame at 30 fps (90 kHz).
        let time_step = if params.spec().codec.is_audio() { 960 } else { 3000 };
        let subscribers = self.room_others(publisher);
        // Key frames to ask for: a request made before the layer's stream
        // was known, or lost on the way, must not leave a subscriber black.
        let mut ask = Vec::new();
        for key in subscribers {
            let Some(s) = self.participants.get_mut(&key) else {
                continue;
            };
            if !s.subscriber_connected {
                continue;
            }
            let Some(index) = s
                .downtracks
                .iter()
                .position(|d| d.publisher == publisher && d.source_mid == mid && d.negotiated && !d.removed && !d.disabled)
            else {
                continue;
            };
            let d = &mut s.downtracks[index];
            let Some(out_mid) = d.mid else {
                continue;
            };
            // Layer choice: forward the current layer; move to the target
            // one at its key frame (or at once for codecs we cannot
            // inspect). Until something is forwarded, any layer's key frame
            // starts the track: the target layer may be paused by the
            // publisher's bandwidth estimate. Key frames are asked for again
            // while waiting: a request made before the layer's stream was
            // known, or lost on the way, must not leave a subscriber black.
            let keyframe_or_blind = is_keyframe || params.spec().codec != Codec::Vp8;
            if d.waiting_keyframe || rid != d.current_rid {
                if !d.waiting_keyframe && rid != d.target_rid {
                    // The layer forwarded stopped (the publisher paused it
                    // for bandwidth or CPU) while this one flows: start
                    // again at whichever layer's key frame comes first.
                    if !forward::layer_stalled(d.last_forwarded, now) {
                        continue;
                    }
                    d.waiting_keyframe = true;
                }
                if !keyframe_or_blind {
                    if forward::ask_keyframe_again(d.keyframe_asked, now) {
                        d.keyframe_asked = Some(now);
                        ask.push(rid.clone());
                    }
                    continue;
                }
                if d.current_rid.is_some() && rid != d.current_rid {
                    d.rewriter.switch_source();
                }
                d.waiting_keyframe = false;
                d.current_rid = rid.clone();
            }
            let out_pt = match d.pt_map.iter().find(|(from, _)| *from == pt) {
                Some((_, to)) => *to,
                None => {
                    let Some(to) = matching_pt(&s.subscriber, &params) else {
                        continue;
                    };
                    let d = &mut s.downtracks[index];
                    d.pt_map.push((pt, to));
                    to
                }
            };
            let d = &mut s.downtracks[index];
            let Some(rewritten) = d.rewriter.rewrite(*packet.seq_no, packet.header.timestamp, time_step) else {
                continue;
            };
            let ext = ExtensionValues {
                audio_level: packet.header.ext_vals.audio_level,
                voice_activity: packet.header.ext_vals.voice_activity,
                video_orientation: packet.header.ext_vals.video_orientation,
                ..Default::default()
            };
            let nackable = d.kind == MediaKind::Video;
            let mut api = s.subscriber.direct_api();
            let Some(stream) = api.stream_tx_by_mid(out_mid, None) else {
                continue;
            };
            stream.write_rtp(
                RtpWrite::new(out_pt, rewritten.seq_no.into(), rewritten.time, now, packet.payload.clone())
                    .marker(packet.header.marker)
                    .ext_vals(ext)
                    .nackable(nackable),
            );
            s.downtracks[index].last_forwarded = Some(now);
            self.forwarded_packets += 1;
            self.forwarded_bytes += packet.payload.len() as u64;
            self.dirty.insert((key, Pc::Subscriber));
        }
        for rid in ask {
            self.request_keyframe(publisher, mid, rid.as_deref());
        }
    }
}

/// The subscriber connection's payload type for the publisher's codec.
fn matching_pt(subscriber: &Rtc, params: &PayloadParams) -> Option<Pt> {
    let config = subscriber.codec_config();
    config
        .match_params(*params)
        .map(|p| p.pt())
        .or_else(|| config.find(|p| p.spec().codec == params.spec().codec).map(|p| p.pt()))
}
