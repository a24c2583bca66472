//! Data channels: livekit-client's `_reliable` and `_lossy` SCTP channels.
//!
//! The client opens both on its publisher connection and expects the SFU to
//! open the same two on its subscriber connection (livekit-client adopts
//! them by label in `ondatachannel`). Each message is one protobuf
//! `DataPacket`. The SFU forwards a packet from a publisher's channel to the
//! same kind of channel of the room's other participants, as livekit-server
//! does (`participant.go` `handleReceivedDataMessage`, `room.go`
//! `BroadcastDataPacketForRoom`):
//!
//! - the sender's `participant_identity` and `participant_sid` are written
//!   by the SFU (in the packet and in a `UserPacket`), never taken from the
//!   sender, so nobody can speak for someone else;
//! - `destination_identities` (packet or `UserPacket`) and the user packet's
//!   `destination_sids` restrict the receivers; empty means everyone else;
//! - client metrics, transcriptions (an agent's, which we never have) and
//!   the deprecated speaker packets are not forwarded; unknown kinds are
//!   dropped rather than relayed blind;
//! - packets over [`MAX_DATA_PACKET_BYTES`] and over the sender's rate
//!   limit ([`DataRate`]) are dropped (counted in [`crate::SfuStats`]). A
//!   receiver whose SCTP buffer is full misses the packet too: the SFU
//!   never queues data of its own.
//!
//! The decisions are the pure functions at the top (table-tested below);
//! the `impl Sfu` block applies them to str0m's channel events.

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::data_packet::Value;
use prost::Message as _;
use str0m::channel::{ChannelConfig, Reliability};
use str0m::channel::{ChannelData, ChannelId};

use super::{Pc, Sfu};
use crate::ParticipantKey;

/// Largest `DataPacket` accepted from a client, encoded. livekit-client
/// splits data streams into chunks of 15,000 bytes and the Rust SDK caps a
/// payload at 15 KiB; 16 KiB leaves room for the packet's own fields.
pub const MAX_DATA_PACKET_BYTES: usize = 16 * 1024;

pub(super) const RELIABLE_LABEL: &str = "_reliable";
pub(super) const LOSSY_LABEL: &str = "_lossy";

/// Which of the two channels a packet travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataKind {
    Reliable,
    Lossy,
}

impl DataKind {
    pub(super) fn from_label(label: &str) -> Option<DataKind> {
        match label {
            RELIABLE_LABEL => Some(DataKind::Reliable),
            LOSSY_LABEL => Some(DataKind::Lossy),
            _ => None,
        }
    }

    /// The subscriber channel's configuration, as livekit-server opens it
    /// (and livekit-client its publisher ones): reliable ordered, or
    /// unordered without retransmissions.
    fn config(self) -> ChannelConfig {
        match self {
            DataKind::Reliable => ChannelConfig { label: RELIABLE_LABEL.to_owned(), ..Default::default() },
            DataKind::Lossy => ChannelConfig {
                label: LOSSY_LABEL.to_owned(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            },
        }
    }

    fn proto(self) -> lk::data_packet::Kind {
        match self {
            DataKind::Reliable => lk::data_packet::Kind::Reliable,
            DataKind::Lossy => lk::data_packet::Kind::Lossy,
        }
    }
}

/// How much data one participant may send through the SFU: a token bucket
/// each for bytes and packets, refilled at these rates, holding at most one
/// second's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRate {
    pub bytes_per_second: u64,
    pub packets_per_second: u64,
}

impl Default for DataRate {
    /// 1 MiB/s and 200 packets/s: chat, reactions and small files flow,
    /// a client cannot turn the SFU into a bulk relay for the room.
    fn default() -> Self {
        Self { bytes_per_second: 1024 * 1024, packets_per_second: 200 }
    }
}

/// A token bucket over time passed in: `rate` tokens a second, at most
/// `burst` held, full at the start.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate_per_second: u64, burst: u64) -> Self {
        Self { rate: rate_per_second as f64, burst: burst as f64, tokens: burst as f64, last: None }
    }

    /// Takes `cost` tokens if that many are held now.
    pub fn take(&mut self, now: Instant, cost: u64) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).min(Duration::from_secs(3600));
            self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        let cost = cost as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Both buckets of one sender.
#[derive(Debug, Clone)]
pub(super) struct DataLimiter {
    bytes: TokenBucket,
    packets: TokenBucket,
}

impl DataLimiter {
    pub(super) fn new(rate: DataRate) -> Self {
        Self {
            bytes: TokenBucket::new(rate.bytes_per_second, rate.bytes_per_second),
            packets: TokenBucket::new(rate.packets_per_second, rate.packets_per_second),
        }
    }

    /// Whether a packet of `len` bytes may go now (taking its tokens).
    pub(super) fn allow(&mut self, now: Instant, len: usize) -> bool {
        // Checked before taking so a refused packet costs nothing.
        let mut probe = self.packets.clone();
        if !probe.take(now, 1) {
            self.packets = probe;
            return false;
        }
        if !self.bytes.take(now, len as u64) {
            return false;
        }
        self.packets = probe;
        true
    }
}

/// Who receives a forwarded packet: everyone else in the room when both
/// lists are empty, else those named by sid or identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Destinations {
    pub sids: Vec<String>,
    pub identities: Vec<String>,
}

impl Destinations {
    pub(super) fn includes(&self, sid: &str, identity: &str) -> bool {
        (self.sids.is_empty() && self.identities.is_empty())
            || self.sids.iter().any(|s| s == sid)
            || self.identities.iter().any(|i| i == identity)
    }
}

/// Prepares a received packet for forwarding, as livekit-server does: the
/// sender's sid and identity replace whatever it claimed, the channel it
/// came on sets `kind`, and the destination lists of the packet and its
/// user packet are made the same. `None`: not forwarded.
#[allow(deprecated)] // `kind` is deprecated but livekit-client still reads it.
pub(super) fn stamp(packet: &mut lk::DataPacket, kind: DataKind, sid: &str, identity: &str) -> Option<Destinations> {
    let forward = match &packet.value {
        Some(
            Value::User(_)
            | Value::ChatMessage(_)
            | Value::SipDtmf(_)
            | Value::RpcRequest(_)
            | Value::RpcAck(_)
            | Value::RpcResponse(_)
            | Value::StreamHeader(_)
            | Value::StreamChunk(_)
            | Value::StreamTrailer(_)
            | Value::EncryptedPacket(_),
        ) => true,
        Some(Value::Speaker(_) | Value::Transcription(_) | Value::Metrics(_)) | None => false,
    };
    if !forward {
        return None;
    }
    packet.kind = kind.proto() as i32;
    packet.participant_sid = sid.to_owned();
    packet.participant_identity = identity.to_owned();
    let mut sids = Vec::new();
    if let Some(Value::User(user)) = &mut packet.value {
        user.participant_sid = sid.to_owned();
        user.participant_identity = identity.to_owned();
        if packet.destination_identities.is_empty() {
            packet.destination_identities = user.destination_identities.clone();
        } else {
            user.destination_identities = packet.destination_identities.clone();
        }
        sids = user.destination_sids.clone();
    }
    Some(Destinations { sids, identities: packet.destination_identities.clone() })
}

/// One participant's data channels on both connections, and its send rate.
pub(super) struct DataChannels {
    /// The publisher connection's channels the client opened, by kind.
    publisher: Vec<(ChannelId, DataKind)>,
    /// The subscriber connection's channels we opened (None: not yet added
    /// to an offer).
    subscriber: Option<[(ChannelId, DataKind); 2]>,
    limiter: DataLimiter,
}

impl DataChannels {
    pub(super) fn new(rate: DataRate) -> Self {
        Self { publisher: Vec::new(), subscriber: None, limiter: DataLimiter::new(rate) }
    }

    /// Adds the two subscriber channels to the offer being built, once.
    pub(super) fn add_to_offer(&mut self, api: &mut str0m::change::SdpApi<'_>) {
        if self.subscriber.is_none() {
            let reliable = api.add_channel_with_config(DataKind::Reliable.config());
            let lossy = api.add_channel_with_config(DataKind::Lossy.config());
            self.subscriber = Some([(reliable, DataKind::Reliable), (lossy, DataKind::Lossy)]);
        }
    }

    fn subscriber_channel(&self, kind: DataKind) -> Option<ChannelId> {
        self.subscriber.iter().flatten().find(|(_, k)| *k == kind).map(|(id, _)| *id)
    }
}

impl Sfu {
    /// A channel opened on one of the participant's connections: on the
    /// publisher, remember which kind it is (by label; others are ignored).
    pub(super) fn channel_open(&mut self, key: ParticipantKey, pc: Pc, id: ChannelId, label: &str) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if pc != Pc::Publisher {
            return;
        }
        // Bounded: one entry per kind, a reopened channel replaces the old.
        if let Some(kind) = DataKind::from_label(label) {
            p.data.publisher.retain(|(_, k)| *k != kind);
            p.data.publisher.push((id, kind));
        }
    }

    pub(super) fn channel_closed(&mut self, key: ParticipantKey, pc: Pc, id: ChannelId) {
        if let Some(p) = self.participants.get_mut(&key)
            && pc == Pc::Publisher
        {
            p.data.publisher.retain(|(c, _)| *c != id);
        }
    }

    /// A message on a publisher channel: checked, stamped with the sender
    /// and written to the receivers' channel of the same kind.
    pub(super) fn data_received(&mut self, now: Instant, key: ParticipantKey, data: ChannelData) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(kind) = p.data.publisher.iter().find(|(id, _)| *id == data.id).map(|(_, k)| *k) else {
            return;
        };
        if !p.grant.can_publish_data {
            return;
        }
        if data.data.len() > MAX_DATA_PACKET_BYTES || !p.data.limiter.allow(now, data.data.len()) {
            self.data_dropped += 1;
            return;
        }
        let Ok(mut packet) = lk::DataPacket::decode(data.data.as_slice()) else {
            self.data_dropped += 1;
            return;
        };
        let Some(destinations) = stamp(&mut packet, kind, &p.sid, &p.grant.identity) else {
            return;
        };
        let bytes = packet.encode_to_vec();
        for other in self.room_others(key) {
            let Some(o) = self.participants.get_mut(&other) else {
                continue;
            };
            if !destinations.includes(&o.sid, &o.grant.identity) {
                continue;
            }
            let Some(id) = o.data.subscriber_channel(kind) else {
                continue;
            };
            // A channel not open yet, or a full send buffer: this receiver
            // misses the packet.
            let written = o.subscriber.channel(id).is_some_and(|mut c| c.write(true, &bytes).unwrap_or(false));
            if written {
                self.data_forwarded_packets += 1;
                self.data_forwarded_bytes += bytes.len() as u64;
                self.dirty.insert((other, Pc::Subscriber));
            } else {
                self.data_dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut bucket = TokenBucket::new(100, 10);
        // Full at the start: ten at once, not eleven.
        for _ in 0..10 {
            assert!(bucket.take(t0, 1));
        }
        assert!(!bucket.take(t0, 1));
        // 100/s: one token every 10 ms.
        assert!(!bucket.take(ms(5), 1));
        assert!(bucket.take(ms(10), 1));
        // A long pause refills to the burst only.
        assert!(bucket.take(ms(10_000), 10));
        assert!(!bucket.take(ms(10_000), 1));
        // A cost above the burst never passes.
        assert!(!bucket.take(ms(20_000), 11));
        // Time going backwards adds nothing.
        assert!(!bucket.take(ms(0), 11));
    }

    #[test]
    fn data_limiter_counts_packets_and_bytes() {
        let t0 = Instant::now();
        let mut limiter = DataLimiter::new(DataRate { bytes_per_second: 1000, packets_per_second: 3 });
        assert!(limiter.allow(t0, 600));
        // Not enough bytes left: refused, and the packet token is kept.
        assert!(!limiter.allow(t0, 600));
        assert!(limiter.allow(t0, 100));
        assert!(limiter.allow(t0, 100));
        // Three packets a second.
        assert!(!limiter.allow(t0, 1));
        assert!(limiter.allow(t0 + Duration::from_secs(1), 1));
    }

    #[test]
    fn destinations_select_by_sid_or_identity() {
        let all = Destinations::default();
        let by_sid = Destinations { sids: vec!["PA_b".into()], identities: vec![] };
        let by_identity = Destinations { sids: vec![], identities: vec!["carol".into()] };
        let cases = [
            (&all, "PA_b", "bob", true),
            (&by_sid, "PA_b", "bob", true),
            (&by_sid, "PA_c", "carol", false),
            (&by_identity, "PA_c", "carol", true),
            (&by_identity, "PA_b", "bob", false),
        ];
        for (destinations, sid, identity, expected) in cases {
            assert_eq!(destinations.includes(sid, identity), expected, "{destinations:?} {sid} {identity}");
        }
    }

    #[test]
    #[allow(deprecated)]
    fn stamp_writes_the_sender_and_never_trusts_its_claim() {
        let mut packet = lk::DataPacket {
            kind: lk::data_packet::Kind::Reliable as i32,
            participant_identity: "mallory-claims-to-be-bob".into(),
            participant_sid: "PA_bob".into(),
            value: Some(Value::User(lk::UserPacket {
                participant_sid: "PA_bob".into(),
                participant_identity: "bob".into(),
                payload: b"hi".to_vec(),
                destination_sids: vec!["PA_c".into()],
                destination_identities: vec!["carol".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        let destinations = stamp(&mut packet, DataKind::Lossy, "PA_m", "mallory").unwrap();
        assert_eq!(destinations, Destinations { sids: vec!["PA_c".into()], identities: vec!["carol".into()] });
        assert_eq!((packet.participant_sid.as_str(), packet.participant_identity.as_str()), ("PA_m", "mallory"));
        assert_eq!(packet.kind, lk::data_packet::Kind::Lossy as i32, "the channel decides the kind");
        assert_eq!(packet.destination_identities, vec!["carol".to_owned()]);
        let Some(Value::User(user)) = &packet.value else { panic!() };
        assert_eq!((user.participant_sid.as_str(), user.participant_identity.as_str()), ("PA_m", "mallory"));
        assert_eq!(user.payload, b"hi");
    }

    #[test]
    fn stamp_forwards_what_clients_exchange_and_nothing_else() {
        let chat = Value::ChatMessage(lk::ChatMessage { message: "hello".into(), ..Default::default() });
        let metrics = Value::Metrics(lk::MetricsBatch::default());
        let transcription = Value::Transcription(lk::Transcription::default());
        let cases = [(Some(chat), true), (Some(metrics), false), (Some(transcription), false), (None, false)];
        for (value, forwarded) in cases {
            let mut packet = lk::DataPacket { value: value.clone(), ..Default::default() };
            assert_eq!(stamp(&mut packet, DataKind::Reliable, "PA_a", "a").is_some(), forwarded, "{value:?}");
        }
    }

    #[test]
    fn channel_labels_are_livekits() {
        assert_eq!(DataKind::from_label("_reliable"), Some(DataKind::Reliable));
        assert_eq!(DataKind::from_label("_lossy"), Some(DataKind::Lossy));
        assert_eq!(DataKind::from_label("_data_track"), None);
    }
}
