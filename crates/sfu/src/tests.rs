//! Whole calls in memory: browsers simulated by str0m peers (two connections
//! each, as livekit-client has them), datagrams shuttled between them and the
//! SFU, time passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::{JoinGrant, JoinOptions, LeaveReason, ParticipantKey, Sfu, SfuConfig, SfuEvent, SfuOutput};

const SFU_ADDR: &str = "127.0.0.1:7882";
const STEP: Duration = Duration::from_millis(5);

fn sfu_addr() -> SocketAddr {
    SFU_ADDR.parse().unwrap()
}

/// One simulated browser: its two peer connections and what it received.
struct Client {
    key: ParticipantKey,
    publisher: Rtc,
    subscriber: Rtc,
    publisher_addr: SocketAddr,
    subscriber_addr: SocketAddr,
    pending_publisher_offer: Option<SdpPendingOffer>,
    signals: Vec<Resp>,
    subscriber_events: Vec<Event>,
    publisher_connected: bool,
    /// Data channels open on the publisher connection, by label.
    publisher_channels: Vec<(ChannelId, String)>,
}

impl Client {
    fn new(key: ParticipantKey, now: Instant, port: u16) -> Self {
        let publisher_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let subscriber_addr: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
        let mut publisher = Rtc::builder().set_rtp_mode(true).build(now);
        publisher.add_local_candidate(Candidate::host(publisher_addr, "udp").unwrap());
        let mut subscriber = Rtc::builder().set_rtp_mode(true).build(now);
        subscriber.add_local_candidate(Candidate::host(subscriber_addr, "udp").unwrap());
        Self {
            key,
            publisher,
            subscriber,
            publisher_addr,
            subscriber_addr,
            pending_publisher_offer: None,
            signals: Vec::new(),
            subscriber_events: Vec::new(),
            publisher_connected: false,
            publisher_channels: Vec::new(),
        }
    }

    fn rtc_at(&mut self, addr: SocketAddr) -> Option<&mut Rtc> {
        if addr == self.publisher_addr {
            Some(&mut self.publisher)
        } else if addr == self.subscriber_addr {
            Some(&mut self.subscriber)
        } else {
            None
        }
    }

    /// Polls one connection until it waits: its events are kept, its
    /// datagrams queued for the SFU. Returns whether anything happened.
    fn poll(&mut self, subscriber: bool, datagrams: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) -> bool {
        let mut moved = false;
        let rtc = if subscriber { &mut self.subscriber } else { &mut self.publisher };
        for _ in 0..10_000 {
            match rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => datagrams.push((t.source, t.destination, Vec::from(t.contents))),
                Output::Event(event) => {
                    moved = true;
                    if subscriber {
                        self.subscriber_events.push(event);
                    } else if matches!(event, Event::Connected) {
                        self.publisher_connected = true;
                    } else if let Event::ChannelOpen(id, label) = event {
                        self.publisher_channels.push((id, label));
                    }
                }
            }
        }
        moved
    }

    /// Data packets received on the subscriber channel labelled `label`.
    fn data_received(&self, label: &str) -> Vec<lk::DataPacket> {
        let channel = self.subscriber_events.iter().find_map(|e| match e {
            Event::ChannelOpen(id, l) if l == label => Some(*id),
            _ => None,
        });
        self.subscriber_events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelData(d) if Some(d.id) == channel => Some(lk::DataPacket::decode(d.data.as_slice()).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn join_response(&self) -> &lk::JoinResponse {
        match self.signals.first() {
            Some(Resp::Join(join)) => join,
            other => panic!("first message is not a join response: {other:?}"),
        }
    }
}

/// The SFU and its clients on one simulated clock.
struct Call {
    now: Instant,
    sfu: Sfu,
    clients: Vec<Client>,
    events: Vec<SfuEvent>,
    next_port: u16,
    /// Datagrams over 1,000 bytes the SFU sent (media of the tests' size).
    large_transmits: u64,
    /// Simulated packet loss, if any.
    loss: Option<Loss>,
}

/// Drops every `every`th media-sized datagram (over 1,000 bytes) sent from
/// or to the address `at`, resends included.
struct Loss {
    at: SocketAddr,
    every: u64,
    seen: u64,
    dropped: u64,
}

impl Call {
    fn new() -> Self {
        Self::with_config(SfuConfig::default())
    }

    fn with_config(config: SfuConfig) -> Self {
        let now = Instant::now();
        let sfu = Sfu::new(config, vec![sfu_addr()], 42, now, 1_700_000_000_000);
        Self { now, sfu, clients: Vec::new(), events: Vec::new(), next_port: 40_000, large_transmits: 0, loss: None }
    }

    fn join(&mut self, identity: &str) -> usize {
        let grant = JoinGrant {
            room: "room".to_owned(),
            identity: identity.to_owned(),
            name: identity.to_owned(),
            metadata: String::new(),
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
        };
        let key = self.sfu.join(self.now, grant, JoinOptions::default()).unwrap();
        self.clients.push(Client::new(key, self.now, self.next_port));
        self.next_port += 2;
        self.pump();
        self.clients.len() - 1
    }

    fn send(&mut self, index: usize, message: Req) {
        let key = self.clients[index].key;
        self.sfu.handle_signal(self.now, key, lk::SignalRequest { message: Some(message) }).unwrap();
        self.pump();
    }

    /// Publishes a video track the way livekit-client does: `add_track`,
    /// then an offer whose m-line carries the track's `cid` as msid track id.
    /// Returns the client's mid.
    fn publish_video(&mut self, index: usize, cid: &str) -> Mid {
        self.send(
            index,
            Req::AddTrack(lk::AddTrackRequest {
                cid: cid.to_owned(),
                name: "camera".to_owned(),
                r#type: lk::TrackType::Video as i32,
                source: lk::TrackSource::Camera as i32,
                width: 640,
                height: 480,
                ..Default::default()
            }),
        );
        let published = self.clients[index].signals.iter().any(|m| {
            matches!(m, Resp::TrackPublished(r) if r.cid == cid && r.track.as_ref().is_some_and(|t| t.sid.starts_with("TR_")))
        });
        assert!(published, "track_published for {cid}");
        self.offer_publisher(index, Some(cid)).expect("a video m-line")
    }

    /// The client's publisher offer: the data channel first time, and a
    /// video m-line for `cid`. Returns its mid.
    fn offer_publisher(&mut self, index: usize, cid: Option<&str>) -> Option<Mid> {
        self.offer_publisher_kind(index, cid, MediaKind::Video)
    }

    /// The client's publisher offer with an m-line of `kind` for `cid`.
    fn offer_publisher_kind(&mut self, index: usize, cid: Option<&str>, kind: MediaKind) -> Option<Mid> {
        let client = &mut self.clients[index];
        let mut api = client.publisher.sdp_api();
        if !client.publisher_connected {
            api.add_channel("_reliable".into());
            api.add_channel_with_config(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
        }
        let mid = cid.map(|cid| api.add_media(kind, Direction::SendOnly, Some("stream".into()), Some(cid.into()), None));
        let (offer, pending) = api.apply().expect("changes to offer");
        client.pending_publisher_offer = Some(pending);
        self.send(
            index,
            Req::Offer(lk::SessionDescription {
                r#type: "offer".into(),
                sdp: offer.to_sdp_string(),
                id: 1,
                ..Default::default()
            }),
        );
        mid
    }

    /// Runs the SFU's outputs and every peer until nothing moves.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            let mut to_sfu = Vec::new();
            while let Some(output) = self.sfu.poll_output() {
                moved = true;
                match output {
                    SfuOutput::Signal { to, message } => {
                        let message = message.message.expect("a message");
                        self.client_signal(to, message);
                    }
                    SfuOutput::Transmit(t) => {
                        if t.contents.len() > 1000 {
                            self.large_transmits += 1;
                        }
                        if self.loses(t.source, t.destination, t.contents.len()) {
                            continue;
                        }
                        let now = self.now;
                        if let Some(client) = self
                            .clients
                            .iter_mut()
                            .find(|c| c.publisher_addr == t.destination || c.subscriber_addr == t.destination)
                        {
                            let subscriber = client.subscriber_addr == t.destination;
                            let rtc = client.rtc_at(t.destination).unwrap();
                            let receive = Receive::new(Protocol::Udp, t.source, t.destination, &t.contents).unwrap();
                            rtc.handle_input(Input::Receive(now, receive)).unwrap();
                            // At once, as a browser would: in RTP mode str0m
                            // holds one received packet until polled, and the
                            // next datagram handed in would replace it.
                            client.poll(subscriber, &mut to_sfu);
                        }
                    }
                    SfuOutput::Event(event) => self.events.push(event),
                }
            }
            let now = self.now;
            for (source, destination, contents) in to_sfu {
                moved = true;
                if !self.loses(source, destination, contents.len()) {
                    self.sfu.handle_datagram(now, source, destination, &contents);
                }
            }
            for i in 0..self.clients.len() {
                moved |= self.poll_client(i);
            }
            if !moved {
                return;
            }
        }
        panic!("the call never settled");
    }

    fn client_signal(&mut self, to: ParticipantKey, message: Resp) {
        let now = self.now;
        let Some(client) = self.clients.iter_mut().find(|c| c.key == to) else {
            return;
        };
        match &message {
            Resp::Answer(answer) => {
                let pending = client.pending_publisher_offer.take().expect("an offer in flight");
                let answer = SdpAnswer::from_sdp_string(&answer.sdp).unwrap();
                client.publisher.sdp_api().accept_answer(pending, answer).unwrap();
            }
            Resp::Offer(offer) => {
                let sdp = SdpOffer::from_sdp_string(&offer.sdp).unwrap();
                let answer = client.subscriber.sdp_api().accept_offer(sdp).unwrap();
                let (key, id) = (client.key, offer.id);
                client.signals.push(message);
                self.sfu
                    .handle_signal(
                        now,
                        key,
                        lk::SignalRequest {
                            message: Some(Req::Answer(lk::SessionDescription {
                                r#type: "answer".into(),
                                sdp: answer.to_sdp_string(),
                                id,
                                ..Default::default()
                            })),
                        },
                    )
                    .unwrap();
                return;
            }
            _ => {}
        }
        client.signals.push(message);
    }

    /// Polls one client's connections; their datagrams go to the SFU.
    fn poll_client(&mut self, index: usize) -> bool {
        let now = self.now;
        let mut datagrams = Vec::new();
        let client = &mut self.clients[index];
        let mut moved = client.poll(false, &mut datagrams);
        moved |= client.poll(true, &mut datagrams);
        for (source, destination, contents) in datagrams {
            moved = true;
            if self.loses(source, destination, contents.len()) {
                continue;
            }
            self.sfu.handle_datagram(now, source, destination, &contents);
        }
        moved
    }

    /// Whether the simulated network drops this datagram (see [`Loss`]).
    fn loses(&mut self, source: SocketAddr, destination: SocketAddr, len: usize) -> bool {
        let Some(loss) = self.loss.as_mut() else {
            return false;
        };
        if len <= 1000 || (source != loss.at && destination != loss.at) {
            return false;
        }
        loss.seen += 1;
        if loss.seen.is_multiple_of(loss.every) {
            loss.dropped += 1;
            return true;
        }
        false
    }

    /// Advances the clock by `total`, one step at a time, pumping all along.
    fn run(&mut self, total: Duration, mut each_step: impl FnMut(&mut Call)) {
        let end = self.now + total;
        while self.now < end {
            self.now += STEP;
            let now = self.now;
            for client in &mut self.clients {
                client.publisher.handle_input(Input::Timeout(now)).unwrap();
                client.subscriber.handle_input(Input::Timeout(now)).unwrap();
            }
            if self.sfu.poll_timeout().is_some_and(|at| at <= now) {
                self.sfu.handle_timeout(now);
            }
            each_step(self);
            self.pump();
        }
    }
}

/// A VP8 payload: key frame or delta, with a recognisable body.
fn vp8_payload(keyframe: bool, n: u8) -> Vec<u8> {
    vec![0x10, if keyframe { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a, n, n, n]
}

#[test]
fn join_response_comes_first_and_names_the_room() {
    let mut call = Call::new();
    let a = call.join("@alice:example.org:DEV");
    let b = call.join("@bob:example.org:DEV");
    let join_a = call.clients[a].join_response().clone();
    let join_b = call.clients[b].join_response().clone();
    assert_eq!(join_a.room.as_ref().unwrap().name, "room");
    assert!(join_a.participant.as_ref().unwrap().sid.starts_with("PA_"));
    assert!(join_a.other_participants.is_empty());
    assert_eq!(join_b.other_participants.len(), 1);
    assert_eq!(join_b.other_participants[0].identity, "@alice:example.org:DEV");
    assert!(!join_b.subscriber_primary);
    assert_eq!((join_b.ping_interval, join_b.ping_timeout), (5, 15));
    assert_eq!(join_b.server_info.as_ref().unwrap().protocol, 16);
    // Alice hears of Bob.
    let update = call.clients[a].signals.iter().find_map(|m| match m {
        Resp::Update(u) => Some(u.participants[0].identity.clone()),
        _ => None,
    });
    assert_eq!(update.as_deref(), Some("@bob:example.org:DEV"));
    assert!(matches!(call.events[..], [SfuEvent::Joined { .. }, SfuEvent::Joined { .. }]));
}

#[test]
fn ping_is_answered_with_the_ping_timestamp() {
    let mut call = Call::new();
    let a = call.join("a");
    call.send(a, Req::PingReq(lk::Ping { timestamp: 1234, rtt: 7 }));
    call.send(a, Req::Ping(99));
    let pong = call.clients[a].signals.iter().find_map(|m| match m {
        Resp::PongResp(p) => Some(*p),
        _ => None,
    });
    assert_eq!(pong, Some(lk::Pong { last_ping_timestamp: 1234, timestamp: 1_700_000_000_000 }));
    assert!(call.clients[a].signals.iter().any(|m| matches!(m, Resp::Pong(99))));
}

#[test]
fn a_silent_participant_is_removed_after_the_ping_timeout() {
    let mut call = Call::new();
    let a = call.join("a");
    let b = call.join("b");
    call.run(Duration::from_secs(10), |_| {});
    call.send(b, Req::PingReq(lk::Ping { timestamp: 1, rtt: 0 }));
    call.run(Duration::from_secs(7), |call| {
        // Bob keeps pinging; Alice does not.
        let key = call.clients[1].key;
        let _ = call.sfu.handle_signal(
            call.now,
            key,
            lk::SignalRequest { message: Some(Req::PingReq(lk::Ping { timestamp: 1, rtt: 0 })) },
        );
    });
    let key_a = call.clients[a].key;
    assert!(call.events.iter().any(|e| matches!(e,
        SfuEvent::Left { participant, reason: LeaveReason::PingTimeout, .. } if *participant == key_a)));
    assert!(!call.events.iter().any(|e| matches!(e, SfuEvent::Left { participant, .. } if *participant == call.clients[b].key)));
}

#[test]
fn publisher_offer_is_answered_and_its_connection_comes_up() {
    let mut call = Call::new();
    let a = call.join("a");
    call.publish_video(a, "cam-a");
    let answer = call.clients[a].signals.iter().find_map(|m| match m {
        Resp::Answer(d) => Some(d.clone()),
        _ => None,
    });
    let answer = answer.expect("an answer");
    assert_eq!(answer.r#type, "answer");
    assert!(answer.sdp.contains("a=ice-lite"), "ICE-lite announced");
    assert!(answer.sdp.contains("a=candidate"), "the SFU's candidate is in the SDP");
    assert_eq!(answer.mid_to_track_id.len(), 1, "{:?}", answer.mid_to_track_id);
    call.run(Duration::from_secs(2), |_| {});
    assert!(call.clients[a].publisher_connected, "ICE and DTLS completed");
}

#[test]
fn add_track_is_bounded_and_needs_the_publish_grant() {
    let mut call = Call::new();
    let grant = JoinGrant {
        room: "r".into(),
        identity: "viewer".into(),
        name: String::new(),
        metadata: String::new(),
        can_publish: false,
        can_subscribe: true,
        can_publish_data: false,
    };
    let viewer = call.sfu.join(call.now, grant, JoinOptions::default()).unwrap();
    let add = |cid: &str| lk::SignalRequest {
        message: Some(Req::AddTrack(lk::AddTrackRequest { cid: cid.into(), ..Default::default() })),
    };
    assert_eq!(call.sfu.handle_signal(call.now, viewer, add("x")), Err(crate::SignalError::NotAllowed));
    let a = call.join("a");
    let key = call.clients[a].key;
    for i in 0..8 {
        call.sfu.handle_signal(call.now, key, add(&format!("t{i}"))).unwrap();
    }
    assert_eq!(call.sfu.handle_signal(call.now, key, add("t8")), Err(crate::SignalError::TooManyTracks));
}

#[test]
fn rooms_and_participants_are_bounded() {
    let now = Instant::now();
    let config = SfuConfig { max_rooms: 1, max_participants_per_room: 1, ..SfuConfig::default() };
    let mut sfu = Sfu::new(config, vec![sfu_addr()], 1, now, 0);
    let grant = |room: &str, who: &str| JoinGrant {
        room: room.into(),
        identity: who.into(),
        name: String::new(),
        metadata: String::new(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: true,
    };
    sfu.join(now, grant("r", "a"), JoinOptions::default()).unwrap();
    assert_eq!(sfu.join(now, grant("r", "b"), JoinOptions::default()), Err(crate::JoinError::RoomFull));
    assert_eq!(sfu.join(now, grant("s", "b"), JoinOptions::default()), Err(crate::JoinError::TooManyRooms));
    // The same identity again replaces the first session.
    sfu.join(now, grant("r", "a"), JoinOptions::default()).unwrap();
    assert_eq!(sfu.stats().participants, 1);
}

#[test]
fn a_publishers_video_reaches_a_subscriber_through_the_sfu() {
    let mut call = Call::new();
    let a = call.join("alice");
    let mid_a = call.publish_video(a, "cam-a");
    call.run(Duration::from_millis(500), |_| {});
    assert!(call.clients[a].publisher_connected);

    let b = call.join("bob");
    call.offer_publisher(b, None);

    let mut n: u8 = 0;
    call.run(Duration::from_secs(3), |call| {
        n = n.wrapping_add(1);
        // 30 packets a second; a key frame every 10.
        if !n.is_multiple_of(7) {
            return;
        }
        let now = call.now;
        let client = &mut call.clients[a];
        let pt = client.publisher.codec_config().find(|p| p.spec().codec == str0m::format::Codec::Vp8).unwrap().pt();
        let seq = u64::from(n / 7);
        let mut api = client.publisher.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid_a, None) else {
            return;
        };
        let payload = vp8_payload(seq % 10 == 1, seq as u8);
        stream.write_rtp(RtpWrite::new(pt, (1000 + seq).into(), (seq * 3000) as u32, now, payload).marker(true));
    });

    let bob = &call.clients[b];
    let offer = bob
        .signals
        .iter()
        .find_map(|m| match m {
            Resp::Offer(o) => Some(o.clone()),
            _ => None,
        })
        .expect("Bob gets a subscriber offer");
    let alice_info = bob
        .signals
        .iter()
        .filter_map(|m| match m {
            Resp::Update(u) => u.participants.iter().find(|p| p.identity == "alice").cloned(),
            _ => None,
        })
        .rfind(|p| !p.tracks.is_empty())
        .or_else(|| bob.join_response().other_participants.iter().find(|p| p.identity == "alice").cloned())
        .expect("Alice's track is announced to Bob");
    let track_sid = alice_info.tracks[0].sid.clone();
    assert_eq!(offer.mid_to_track_id.values().collect::<Vec<_>>(), vec![&track_sid]);
    assert!(
        offer.sdp.contains(&format!("a=msid:{}|{} {}", alice_info.sid, track_sid, track_sid)),
        "msid names participant and track: {}",
        offer.sdp
    );

    let received: Vec<Vec<u8>> = bob
        .subscriber_events
        .iter()
        .filter_map(|e| match e {
            Event::RtpPacket(p) => Some(p.payload.to_vec()),
            _ => None,
        })
        .collect();
    assert!(received.len() >= 10, "Bob received {} packets", received.len());
    // Forwarding starts at a key frame and keeps the payload intact.
    assert_eq!(received[0][1] & 0x01, 0, "first forwarded packet is a key frame");
    assert!(received.iter().all(|p| p[..5] == [0x10, p[1], 0x9d, 0x01, 0x2a]));
    assert!(call.sfu.stats().forwarded_packets >= 10);

    // Alice leaves: Bob hears it, the SFU reports it.
    call.send(a, Req::Leave(lk::LeaveRequest::default()));
    let key_a = call.clients[a].key;
    assert!(call.events.iter().any(|e| matches!(e,
        SfuEvent::Left { participant, reason: LeaveReason::ClientLeft, .. } if *participant == key_a)));
    let gone = call.clients[b].signals.iter().any(|m| {
        matches!(m, Resp::Update(u)
        if u.participants.iter().any(|p| p.identity == "alice" && p.state == lk::participant_info::State::Disconnected as i32))
    });
    assert!(gone, "Bob sees Alice leave");
}

impl Call {
    /// Publishes a microphone track (`add_track`, then an Opus m-line).
    fn publish_audio(&mut self, index: usize, cid: &str) -> Mid {
        self.send(
            index,
            Req::AddTrack(lk::AddTrackRequest {
                cid: cid.to_owned(),
                name: "microphone".to_owned(),
                r#type: lk::TrackType::Audio as i32,
                source: lk::TrackSource::Microphone as i32,
                ..Default::default()
            }),
        );
        self.offer_publisher_kind(index, Some(cid), MediaKind::Audio).expect("an audio m-line")
    }

    /// Writes one 20 ms Opus packet at `level` (−dBov) on the client's `mid`.
    fn send_audio(&mut self, index: usize, mid: Mid, n: u64, level: i8) {
        let now = self.now;
        let client = &mut self.clients[index];
        let pt = client.publisher.codec_config().find(|p| p.spec().codec == str0m::format::Codec::Opus).unwrap().pt();
        let mut api = client.publisher.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let ext = ExtensionValues { audio_level: Some(-level), voice_activity: Some(true), ..Default::default() };
        stream.write_rtp(RtpWrite::new(pt, (500 + n).into(), (n * 960) as u32, now, vec![0xfc, n as u8, 1, 2]).ext_vals(ext));
    }

    /// Writes one VP8 packet numbered `seq` on the client's `mid`.
    fn send_video(&mut self, index: usize, mid: Mid, seq: u64) {
        let now = self.now;
        let client = &mut self.clients[index];
        let pt = client.publisher.codec_config().find(|p| p.spec().codec == str0m::format::Codec::Vp8).unwrap().pt();
        let mut api = client.publisher.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let payload = vp8_payload(seq % 10 == 1, seq as u8);
        stream.write_rtp(RtpWrite::new(pt, (1000 + seq).into(), (seq * 3000) as u32, now, payload).marker(true));
    }

    fn sid(&self, index: usize) -> String {
        self.clients[index].join_response().participant.as_ref().unwrap().sid.clone()
    }

    fn signals_since<'a>(&'a self, index: usize, from: usize) -> impl Iterator<Item = &'a Resp> + 'a {
        self.clients[index].signals[from..].iter()
    }
}

#[test]
fn the_publisher_answer_keeps_the_audio_level_extension() {
    let mut call = Call::new();
    let a = call.join("alice");
    call.publish_audio(a, "mic-a");
    let answer = call.clients[a].signals.iter().find_map(|m| match m {
        Resp::Answer(d) => Some(d.sdp.clone()),
        _ => None,
    });
    let answer = answer.expect("an answer");
    assert!(answer.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level"), "{answer}");
}

#[test]
fn a_loud_speaker_is_announced_to_the_room_and_dropped_when_silent() {
    let mut call = Call::new();
    let a = call.join("alice");
    let b = call.join("bob");
    let mid = call.publish_audio(a, "mic-a");
    call.offer_publisher(b, None);
    call.run(Duration::from_millis(500), |_| {});
    assert!(call.clients[a].publisher_connected);
    let alice = call.sid(a);

    // Alice talks at −20 dBov for 1.5 s (a packet every 20 ms).
    let mut n = 0;
    call.run(Duration::from_millis(1500), |call| {
        n += 1;
        if n % 4 == 0 {
            call.send_audio(a, mid, n / 4, 20);
        }
    });
    for who in [a, b] {
        let speakers: Vec<&lk::SpeakerInfo> = call.clients[who]
            .signals
            .iter()
            .filter_map(|m| match m {
                Resp::SpeakersChanged(c) => Some(&c.speakers),
                _ => None,
            })
            .flatten()
            .collect();
        let last = speakers.last().unwrap_or_else(|| panic!("client {who} got no speakers_changed"));
        assert_eq!(last.sid, alice);
        assert!(last.active && last.level > 0.0 && last.level <= 1.0, "{last:?}");
        // Changes only, at most every 400 ms: not one per packet.
        assert!(speakers.len() <= 4, "{speakers:?}");
    }

    // She stops: two windows later, at the next evaluation, everyone
    // hears she no longer speaks.
    let from = call.clients[b].signals.len();
    call.run(Duration::from_millis(1250), |_| {});
    let silent = call.signals_since(b, from).any(
        |m| matches!(m, Resp::SpeakersChanged(c) if c.speakers.iter().any(|s| s.sid == alice && !s.active && s.level == 0.0)),
    );
    assert!(silent, "Bob hears Alice fall silent");
}

#[test]
fn quiet_audio_makes_no_speaker() {
    let mut call = Call::new();
    let a = call.join("alice");
    let mid = call.publish_audio(a, "mic-a");
    call.run(Duration::from_millis(500), |_| {});
    let mut n = 0;
    call.run(Duration::from_secs(2), |call| {
        n += 1;
        if n % 4 == 0 {
            call.send_audio(a, mid, n / 4, 70);
        }
    });
    assert!(!call.clients[a].signals.iter().any(|m| matches!(m, Resp::SpeakersChanged(_))));
}

/// Connection quality updates Alice and Bob received, latest last, as
/// (participant sid, quality) lists.
fn qualities(call: &Call, index: usize) -> Vec<Vec<(String, i32)>> {
    call.clients[index]
        .signals
        .iter()
        .filter_map(|m| match m {
            Resp::ConnectionQuality(u) => Some(u.updates.iter().map(|i| (i.participant_sid.clone(), i.quality)).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn connection_quality_is_excellent_when_clean_and_falls_with_loss() {
    let mut call = Call::new();
    let a = call.join("alice");
    let b = call.join("bob");
    let mid = call.publish_video(a, "cam-a");
    call.offer_publisher(b, None);
    let (alice, bob) = (call.sid(a), call.sid(b));
    let excellent = lk::ConnectionQuality::Excellent as i32;

    let mut seq = 0;
    call.run(Duration::from_millis(5500), |call| {
        seq += 1;
        call.send_video(a, mid, seq);
    });
    for who in [a, b] {
        let got = qualities(&call, who);
        assert_eq!(got.len(), 1, "one update in the first 5 s: {got:?}");
        let mut first = got[0].clone();
        first.sort();
        let mut expected = vec![(alice.clone(), excellent), (bob.clone(), excellent)];
        expected.sort();
        assert_eq!(first, expected);
    }

    // Then a fifth of Alice's packets are lost: she drops below EXCELLENT,
    // Bob stays there.
    call.run(Duration::from_secs(5), |call| {
        seq += 1;
        if seq % 5 != 0 {
            call.send_video(a, mid, seq);
        }
    });
    let got = qualities(&call, b);
    assert_eq!(got.len(), 2, "a change is sent: {got:?}");
    let latest = &got[1];
    let of = |sid: &str| latest.iter().find(|(s, _)| s == sid).map(|(_, q)| *q);
    assert_eq!(of(&bob), Some(excellent));
    assert!(of(&alice).is_some_and(|q| q != excellent), "{latest:?}");
    let score = call.clients[b].signals.iter().rev().find_map(|m| match m {
        Resp::ConnectionQuality(u) => u.updates.iter().find(|i| i.participant_sid == alice).map(|i| i.score),
        _ => None,
    });
    assert!(score.is_some_and(|s| (1.0..4.5).contains(&s)), "{score:?}");
}

fn quality_updates(call: &Call, index: usize) -> Vec<Vec<bool>> {
    call.clients[index]
        .signals
        .iter()
        .filter_map(|m| match m {
            Resp::SubscribedQualityUpdate(u) => {
                assert_eq!(u.subscribed_codecs.len(), 1);
                assert_eq!(u.subscribed_codecs[0].codec, "vp8");
                Some(u.subscribed_codecs[0].qualities.iter().map(|q| q.enabled).collect())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn dynacast_tells_the_publisher_which_qualities_are_watched() {
    let mut call = Call::new();
    let a = call.join("alice");
    let b = call.join("bob");
    let mid = call.publish_video(a, "cam-a");
    call.offer_publisher(b, None);
    let mut seq = 0;
    call.run(Duration::from_millis(500), |call| {
        seq += 1;
        call.send_video(a, mid, seq);
    });
    let track_sid = call.clients[a]
        .signals
        .iter()
        .find_map(|m| match m {
            Resp::TrackPublished(t) => t.track.as_ref().map(|t| t.sid.clone()),
            _ => None,
        })
        .unwrap();
    // Bob watches everything: nothing to say.
    assert!(quality_updates(&call, a).is_empty());

    // Bob shrinks the tile to the low layer: Alice hears after 5 s.
    call.send(
        b,
        Req::TrackSetting(lk::UpdateTrackSettings {
            track_sids: vec![track_sid.clone()],
            quality: lk::VideoQuality::Low as i32,
            ..Default::default()
        }),
    );
    call.run(Duration::from_secs(4), |_| {});
    assert!(quality_updates(&call, a).is_empty(), "a fall waits");
    call.run(Duration::from_millis(1500), |_| {});
    assert_eq!(quality_updates(&call, a), vec![vec![true, false, false]]);

    // Back to high: at once.
    call.send(
        b,
        Req::TrackSetting(lk::UpdateTrackSettings {
            track_sids: vec![track_sid.clone()],
            quality: lk::VideoQuality::High as i32,
            ..Default::default()
        }),
    );
    assert_eq!(quality_updates(&call, a).last(), Some(&vec![true, true, true]));

    // Bob unsubscribes: nobody watches, Alice may pause everything.
    call.send(
        b,
        Req::Subscription(lk::UpdateSubscription { track_sids: vec![track_sid], subscribe: false, ..Default::default() }),
    );
    call.run(Duration::from_millis(5500), |_| {});
    assert_eq!(quality_updates(&call, a).last(), Some(&vec![false, false, false]));
}

#[test]
fn unsubscribing_removes_the_track_and_subscribing_brings_it_back() {
    let mut call = Call::new();
    let a = call.join("alice");
    let b = call.join("bob");
    let mid = call.publish_video(a, "cam-a");
    call.offer_publisher(b, None);
    let mut seq = 0;
    call.run(Duration::from_millis(800), |call| {
        seq += 1;
        call.send_video(a, mid, seq);
    });
    let offers = |call: &Call| -> Vec<lk::SessionDescription> {
        call.clients[b]
            .signals
            .iter()
            .filter_map(|m| match m {
                Resp::Offer(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(offers(&call).len(), 1);
    let track_sid = offers(&call)[0].mid_to_track_id.values().next().unwrap().clone();
    let received = |call: &Call| call.clients[b].subscriber_events.iter().filter(|e| matches!(e, Event::RtpPacket(_))).count();
    assert!(received(&call) > 0);

    let unsubscribe = |subscribe| {
        Req::Subscription(lk::UpdateSubscription {
            participant_tracks: vec![lk::ParticipantTracks {
                participant_sid: String::new(),
                track_sids: vec![track_sid.clone()],
            }],
            subscribe,
            ..Default::default()
        })
    };
    call.send(b, unsubscribe(false));
    let after = offers(&call);
    assert_eq!(after.len(), 2, "a new offer");
    assert!(after[1].mid_to_track_id.is_empty(), "{:?}", after[1].mid_to_track_id);
    assert!(after[1].sdp.contains("m=video 0 "), "the m-line is stopped: {}", after[1].sdp);
    call.run(Duration::from_millis(300), |call| {
        seq += 1;
        call.send_video(a, mid, seq);
    });
    let stopped = received(&call);
    call.run(Duration::from_millis(300), |call| {
        seq += 1;
        call.send_video(a, mid, seq);
    });
    assert_eq!(received(&call), stopped, "nothing forwarded once unsubscribed");

    call.send(b, unsubscribe(true));
    let after = offers(&call);
    assert_eq!(after.len(), 3);
    assert_eq!(after[2].mid_to_track_id.values().collect::<Vec<_>>(), vec![&track_sid]);
    call.run(Duration::from_secs(1), |call| {
        seq += 1;
        call.send_video(a, mid, seq);
    });
    assert!(received(&call) > stopped, "forwarding resumes");
    // Unknown tracks change nothing.
    call.send(
        b,
        Req::Subscription(lk::UpdateSubscription { track_sids: vec!["TR_nope".into()], subscribe: true, ..Default::default() }),
    );
    assert_eq!(offers(&call).len(), 3);
}

/// Alice, Bob and Carol in one room, each with both connections and both
/// data channels up.
fn three_with_data_channels(config: SfuConfig) -> Call {
    let mut call = Call::with_config(config);
    for who in ["alice", "bob", "carol"] {
        let i = call.join(who);
        call.offer_publisher(i, None);
    }
    call.run(Duration::from_secs(2), |_| {});
    for client in &call.clients {
        let labels: Vec<&str> = client.publisher_channels.iter().map(|(_, l)| l.as_str()).collect();
        assert!(labels.contains(&"_reliable") && labels.contains(&"_lossy"), "publisher channels open: {labels:?}");
        let sub: Vec<&str> = client
            .subscriber_events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelOpen(_, l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        assert!(sub.contains(&"_reliable") && sub.contains(&"_lossy"), "the SFU opened both subscriber channels: {sub:?}");
    }
    call
}

/// Writes `packet` on the client's publisher channel `label`.
fn send_data(call: &mut Call, index: usize, label: &str, packet: &lk::DataPacket) {
    let client = &mut call.clients[index];
    let id = client.publisher_channels.iter().find(|(_, l)| l == label).unwrap().0;
    let written = client.publisher.channel(id).unwrap().write(true, &packet.encode_to_vec()).unwrap();
    assert!(written);
}

#[allow(deprecated)] // livekit-client still fills the user packet's own fields.
fn user_packet(payload: &[u8], destinations: &[&str]) -> lk::DataPacket {
    lk::DataPacket {
        participant_identity: "bob".into(),
        value: Some(lk::data_packet::Value::User(lk::UserPacket {
            participant_identity: "bob".into(),
            participant_sid: "PA_forged".into(),
            payload: payload.to_vec(),
            destination_identities: destinations.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn user_payloads(packets: &[lk::DataPacket]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .filter_map(|p| match &p.value {
            Some(lk::data_packet::Value::User(u)) => Some(u.payload.clone()),
            _ => None,
        })
        .collect()
}

#[test]
#[allow(deprecated)]
fn data_packets_reach_the_others_stamped_with_the_sender() {
    let mut call = three_with_data_channels(SfuConfig::default());
    let alice_sid = call.clients[0].join_response().participant.as_ref().unwrap().sid.clone();
    // Alice claims to be Bob; everyone else gets it as Alice's.
    send_data(&mut call, 0, "_reliable", &user_packet(b"to all", &[]));
    call.run(Duration::from_millis(200), |_| {});
    for receiver in [1, 2] {
        let packets = call.clients[receiver].data_received("_reliable");
        assert_eq!(user_payloads(&packets), vec![b"to all".to_vec()], "receiver {receiver}");
        let p = &packets[0];
        assert_eq!((p.participant_identity.as_str(), p.participant_sid.as_str()), ("alice", alice_sid.as_str()));
        let Some(lk::data_packet::Value::User(u)) = &p.value else { panic!() };
        assert_eq!((u.participant_identity.as_str(), u.participant_sid.as_str()), ("alice", alice_sid.as_str()));
    }
    assert!(call.clients[0].data_received("_reliable").is_empty(), "not echoed to the sender");

    // Addressed to Carol only, on the lossy channel.
    send_data(&mut call, 0, "_lossy", &user_packet(b"for carol", &["carol"]));
    call.run(Duration::from_millis(200), |_| {});
    assert_eq!(user_payloads(&call.clients[2].data_received("_lossy")), vec![b"for carol".to_vec()]);
    assert!(call.clients[1].data_received("_lossy").is_empty(), "Bob is not addressed");
    assert!(call.clients[2].data_received("_reliable").len() == 1, "the lossy packet stays on the lossy channel");
    #[allow(deprecated)]
    let kind = call.clients[2].data_received("_lossy")[0].kind;
    assert_eq!(kind, lk::data_packet::Kind::Lossy as i32);

    // Too big: dropped, counted.
    let dropped_before = call.sfu.stats().data_dropped;
    send_data(&mut call, 0, "_reliable", &user_packet(&vec![7u8; crate::MAX_DATA_PACKET_BYTES + 1], &[]));
    call.run(Duration::from_millis(200), |_| {});
    assert_eq!(call.clients[1].data_received("_reliable").len(), 1, "the oversized packet is not forwarded");
    assert_eq!(call.sfu.stats().data_dropped, dropped_before + 1);
    let stats = call.sfu.stats();
    assert_eq!(stats.data_forwarded_packets, 3);
}

#[test]
fn data_is_rate_limited_per_sender() {
    let config =
        SfuConfig { data_rate: crate::DataRate { bytes_per_second: 1_000_000, packets_per_second: 5 }, ..SfuConfig::default() };
    let mut call = three_with_data_channels(config);
    for n in 0..10u8 {
        send_data(&mut call, 1, "_reliable", &user_packet(&[n], &[]));
    }
    call.run(Duration::from_millis(200), |_| {});
    let got = user_payloads(&call.clients[0].data_received("_reliable"));
    assert_eq!(got, (0..5u8).map(|n| vec![n]).collect::<Vec<_>>(), "the first five of a burst pass");
    // A second later the bucket has refilled.
    call.run(Duration::from_secs(1), |_| {});
    send_data(&mut call, 1, "_reliable", &user_packet(b"later", &[]));
    call.run(Duration::from_millis(200), |_| {});
    assert_eq!(user_payloads(&call.clients[0].data_received("_reliable")).last().unwrap(), b"later");
}

#[test]
fn a_participant_without_the_data_grant_is_not_relayed() {
    let mut call = Call::new();
    let a = call.join("a");
    call.offer_publisher(a, None);
    let grant = JoinGrant {
        room: "room".into(),
        identity: "quiet".into(),
        name: String::new(),
        metadata: String::new(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: false,
    };
    let key = call.sfu.join(call.now, grant, JoinOptions::default()).unwrap();
    call.clients.push(Client::new(key, call.now, 41_000));
    call.pump();
    call.offer_publisher(1, None);
    call.run(Duration::from_secs(2), |_| {});
    send_data(&mut call, 1, "_reliable", &user_packet(b"x", &[]));
    call.run(Duration::from_millis(200), |_| {});
    assert!(call.clients[0].data_received("_reliable").is_empty());
}

#[test]
fn everything_is_released_when_the_last_participant_leaves() {
    let mut call = three_with_data_channels(SfuConfig::default());
    let mid = call.publish_video(0, "cam");
    call.run(Duration::from_millis(500), |_| {});
    assert_eq!(call.sfu.stats().published_tracks, 1);
    assert_eq!(call.sfu.stats().forwarded_tracks, 2, "Bob and Carol each forwarded Alice's camera");
    let _ = mid;
    call.send(0, Req::Leave(lk::LeaveRequest::default()));
    let key = call.clients[1].key;
    call.sfu.disconnect(call.now, key);
    call.run(Duration::from_millis(100), |_| {});
    call.send(2, Req::Leave(lk::LeaveRequest::default()));
    call.run(Duration::from_millis(100), |_| {});
    let stats = call.sfu.stats();
    assert_eq!((stats.rooms, stats.participants, stats.published_tracks, stats.forwarded_tracks), (0, 0, 0, 0));
    assert_eq!(call.sfu.held_entries(), 0, "no room, participant, route or pending poll left");
    assert_eq!(call.sfu.poll_timeout(), None, "no timer left");
}

/// Alice publishes a camera, Bob subscribes, and both connections are up.
fn alice_to_bob() -> (Call, Mid) {
    let mut call = Call::new();
    let a = call.join("alice");
    let mid_a = call.publish_video(a, "cam-a");
    call.run(Duration::from_millis(500), |_| {});
    let b = call.join("bob");
    call.offer_publisher(b, None);
    call.run(Duration::from_millis(500), |_| {});
    (call, mid_a)
}

/// Alice sends `frames` 4-packet VP8 frames of 1,042-byte payloads, one
/// every 35 ms (7 steps), then the call runs `settle` more. Returns the
/// packets sent.
fn send_frames(call: &mut Call, mid: Mid, frames: u64, settle: Duration) -> u64 {
    let mut seq: u64 = 0;
    let mut step: u64 = 0;
    call.run(Duration::from_millis(35 * frames), |call| {
        step += 1;
        if !step.is_multiple_of(7) {
            return;
        }
        let now = call.now;
        let client = &mut call.clients[0];
        let pt = client.publisher.codec_config().find(|p| p.spec().codec == str0m::format::Codec::Vp8).unwrap().pt();
        let mut api = client.publisher.direct_api();
        let stream = api.stream_tx_by_mid(mid, None).unwrap();
        for i in 0..4 {
            seq += 1;
            let mut payload = vec![0u8; 1042];
            if i == 0 {
                payload[..5].copy_from_slice(&[0x10, if seq == 1 { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
            }
            // The publisher's stream keeps its packets for resends, as a
            // browser's does.
            payload[5..13].copy_from_slice(&seq.to_be_bytes());
            let write = RtpWrite::new(pt, seq.into(), (step * 3000) as u32, now, payload).marker(i == 3).nackable(true);
            stream.write_rtp(write);
        }
    });
    call.run(settle, |_| {});
    seq
}

/// The publisher's numbers (carried in the payload) of the distinct
/// packets Bob's subscriber connection surfaced, in arrival order, and how
/// many times one came twice.
fn bob_received(call: &Call) -> (Vec<u64>, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    let mut duplicates = 0;
    for e in &call.clients[1].subscriber_events {
        let Event::RtpPacket(p) = e else { continue };
        let n = u64::from_be_bytes(p.payload[5..13].try_into().unwrap());
        if seen.insert(n) {
            order.push(n);
        } else {
            duplicates += 1;
        }
    }
    (order, duplicates)
}

#[test]
fn every_packet_of_a_steady_stream_reaches_the_subscriber() {
    let (mut call, mid_a) = alice_to_bob();
    let sent = send_frames(&mut call, mid_a, 100, Duration::from_millis(200));
    assert_eq!(sent, 400);
    // Everything from the first key frame on is written to Bob's connection
    // and leaves the SFU as a datagram of its own (the first frame may go
    // by before Bob's connection is up).
    let forwarded = call.sfu.stats().forwarded_packets;
    assert!(forwarded >= sent - 4, "forwarded {forwarded} of {sent}");
    assert!(call.large_transmits >= forwarded, "{} datagrams for {forwarded} packets", call.large_transmits);
    // And Bob's peer surfaces each one, once, in order.
    let (received, duplicates) = bob_received(&call);
    assert_eq!(received.len() as u64, forwarded, "Bob received {} of {forwarded}", received.len());
    assert_eq!(duplicates, 0);
    assert!(received.windows(2).all(|w| w[1] == w[0] + 1), "in order: {received:?}");
    assert_eq!(received.last(), Some(&sent));
}

#[test]
fn packets_lost_on_the_way_to_the_subscriber_are_resent_from_the_sfu() {
    let (mut call, mid_a) = alice_to_bob();
    let bob = call.clients[1].subscriber_addr;
    call.loss = Some(Loss { at: bob, every: 10, seen: 0, dropped: 0 });
    let sent = send_frames(&mut call, mid_a, 100, Duration::from_millis(500));
    let dropped = call.loss.as_ref().unwrap().dropped;
    assert!(dropped >= 30, "the network dropped {dropped} packets");
    let forwarded = call.sfu.stats().forwarded_packets;
    assert!(forwarded >= sent - 4, "forwarded {forwarded} of {sent}");
    // Bob's peer NACKs the gaps; the SFU's send buffer answers with RTX.
    let (received, _) = bob_received(&call);
    assert_eq!(received.len() as u64, forwarded, "Bob received {} of {forwarded}, {dropped} dropped", received.len());
    // Nothing reached the publisher: the SFU served every NACK itself.
    assert_eq!(call.sfu.stats().packets_lost, 0);
}

#[test]
fn packets_lost_on_the_way_from_the_publisher_are_asked_for_again_and_forwarded() {
    let (mut call, mid_a) = alice_to_bob();
    let alice = call.clients[0].publisher_addr;
    call.loss = Some(Loss { at: alice, every: 10, seen: 0, dropped: 0 });
    let sent = send_frames(&mut call, mid_a, 100, Duration::from_millis(500));
    let dropped = call.loss.as_ref().unwrap().dropped;
    assert!(dropped >= 30, "the network dropped {dropped} packets");
    // The SFU's publisher connection NACKs the gaps, Alice resends, and
    // the late packets are forwarded into their place in Bob's numbering.
    let forwarded = call.sfu.stats().forwarded_packets;
    assert!(forwarded >= sent - 4, "forwarded {forwarded} of {sent}");
    let (received, _) = bob_received(&call);
    assert_eq!(received.len() as u64, forwarded, "Bob received {} of {forwarded}, {dropped} dropped", received.len());
    let mut sorted = received.clone();
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|w| w[1] == w[0] + 1), "no hole: {sorted:?}");
}
