//! The built-in SFU over real sockets: LiveKit signalling on the server's
//! WebSocket, media over its UDP port, with two simulated browsers (str0m
//! peer connections on UDP sockets of their own, two each as livekit-client
//! has them). Alice publishes a video track; Bob joins, is offered it, and
//! receives her packets through the SFU; Alice leaves and Bob sees it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chancery_sfu::protocol::signal_request::Message as Req;
use chancery_sfu::protocol::signal_response::Message as Resp;
use chancery_sfu::protocol::{self as lk, SignalRequest, SignalResponse};
use chancery_sfu::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use chancery_sfu::str0m::format::Codec;
use chancery_sfu::str0m::media::{Direction, MediaKind, Mid};
use chancery_sfu::str0m::net::{Protocol, Receive};
use chancery_sfu::str0m::rtp::RtpWrite;
use chancery_sfu::str0m::{Candidate, Event, Input, Output, Rtc};
use chancery_sfu::token::{self, Claims, VideoGrant};
use chancery_testkit::{Backend, TestServer};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "chancery-test-key";
const API_SECRET: &str = "a-test-secret-of-at-least-32-characters";
const DEADLINE: Duration = Duration::from_secs(20);

async fn sfu_server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |config| {
        config.sfu.enabled = true;
        config.sfu.udp_listen = "127.0.0.1:0".parse().unwrap();
        config.sfu.api_key = API_KEY.into();
        config.sfu.api_secret = API_SECRET.into();
    })
    .await
    .unwrap()
}

fn mint(identity: &str, room: &str, secret: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = Claims {
        iss: API_KEY.into(),
        sub: identity.into(),
        nbf: Some(now - 10),
        exp: now + 3600,
        name: String::new(),
        metadata: String::new(),
        video: VideoGrant { room_join: true, room: room.into(), ..VideoGrant::default() },
    };
    token::sign(&claims, secret)
}

fn ws_base(server: &TestServer) -> String {
    format!("{}/_chancery/livekit", server.base_url.replacen("http://", "ws://", 1))
}

async fn validate_answers_by_token(backend: Backend) {
    let server = sfu_server(backend).await;
    let http = reqwest::Client::new();
    let base = format!("{}/_chancery/livekit", server.base_url);
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(format!("{base}/rtc/validate")).await, 401, "no token");
    let forged = mint("@eve:localhost:X", "room", "not-the-secret-not-the-secret-!!");
    assert_eq!(status(format!("{base}/rtc/validate?access_token={forged}")).await, 401, "wrong secret");
    let good = mint("@alice:localhost:A", "room", API_SECRET);
    let response = http.get(format!("{base}/rtc/validate?access_token={good}")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "success");
    // The single-PC v1 path is not served: livekit-client falls back on 404.
    let v1 = http.get(format!("{base}/rtc/v1/validate?access_token={good}")).send().await.unwrap();
    assert_eq!(v1.status().as_u16(), 404);
    assert!(!v1.text().await.unwrap().contains("requested room does not exist"));
    assert_eq!(status(format!("{base}/rtc/v1?access_token={good}")).await, 404);
    // A WebSocket with a bad token is refused before the upgrade, with 401.
    for token in [forged.as_str(), "not-a-jwt"] {
        match tokio_tungstenite::connect_async(format!("{}/rtc?access_token={token}", ws_base(&server))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 401),
            other => panic!("a bad token's WebSocket: {:?}", other.map(|_| ())),
        }
    }
    server.stop().await.unwrap();
}

on_both_backends!(validate_answers_by_token);

/// Without `[sfu] enabled` none of its routes exist.
async fn routes_are_absent_when_disabled(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let http = reqwest::Client::new();
    let good = mint("@alice:localhost:A", "room", API_SECRET);
    for path in ["rtc/validate", "rtc"] {
        let url = format!("{}/_chancery/livekit/{path}?access_token={good}", server.base_url);
        assert_eq!(http.get(url).send().await.unwrap().status().as_u16(), 404, "{path}");
    }
    server.stop().await.unwrap();
}

on_both_backends!(routes_are_absent_when_disabled);

/// A simulated browser: signal WebSocket and two peer connections on UDP.
struct Browser {
    signals: mpsc::UnboundedReceiver<Resp>,
    send: mpsc::UnboundedSender<SignalRequest>,
    publisher: Peer,
    subscriber: Peer,
    pending_offer: Option<SdpPendingOffer>,
    received: Vec<Resp>,
    closed: bool,
}

struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    connected: bool,
    rtp_payloads: Vec<Vec<u8>>,
}

impl Peer {
    async fn new() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Peer { rtc, socket, addr, connected: false, rtp_payloads: Vec::new() }
    }

    /// Runs str0m until it waits, sending its datagrams, then feeds what the
    /// socket holds (waiting at most `wait` for the first).
    async fn drive(&mut self, wait: Duration) {
        self.poll().await;
        let mut buf = vec![0u8; 2048];
        let mut first = true;
        for _ in 0..256 {
            let received = if first {
                first = false;
                match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
                    Ok(Ok(received)) => Some(received),
                    _ => None,
                }
            } else {
                self.socket.try_recv_from(&mut buf).ok()
            };
            let Some((len, source)) = received else { break };
            let receive = Receive::new(Protocol::Udp, source, self.addr, &buf[..len]).unwrap();
            self.rtc.handle_input(Input::Receive(Instant::now(), receive)).unwrap();
            // At once: in RTP mode str0m holds one received packet until
            // polled, and the next datagram handed in would replace it.
            self.poll().await;
        }
        self.rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
    }

    /// Polls str0m until it waits: datagrams sent, events kept.
    async fn poll(&mut self) {
        for _ in 0..10_000 {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::RtpPacket(packet)) => self.rtp_payloads.push(packet.payload.to_vec()),
                Output::Event(_) => {}
            }
        }
    }
}

impl Browser {
    async fn connect(server: &TestServer, identity: &str) -> Browser {
        let url = format!(
            "{}/rtc?access_token={}&auto_subscribe=1&protocol=16&sdk=js",
            ws_base(server),
            mint(identity, "room", API_SECRET)
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (signal_tx, signals) = mpsc::unbounded_channel();
        let (send, mut send_rx) = mpsc::unbounded_channel::<SignalRequest>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = send_rx.recv() => match out {
                        Some(request) => {
                            if sink.send(Message::Binary(request.encode_to_vec().into())).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    message = stream.next() => match message {
                        Some(Ok(Message::Binary(bytes))) => {
                            let response = SignalResponse::decode(bytes).unwrap();
                            if signal_tx.send(response.message.unwrap()).is_err() {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        });
        Browser {
            signals,
            send,
            publisher: Peer::new().await,
            subscriber: Peer::new().await,
            pending_offer: None,
            received: Vec::new(),
            closed: false,
        }
    }

    fn request(&self, message: Req) {
        self.send.send(SignalRequest { message: Some(message) }).unwrap();
    }

    /// Handles signal messages (answers, offers) and drives both peers once.
    async fn step(&mut self) {
        loop {
            match self.signals.try_recv() {
                Ok(message) => {
                    match &message {
                        Resp::Answer(answer) => {
                            let pending = self.pending_offer.take().expect("an offer in flight");
                            let answer = SdpAnswer::from_sdp_string(&answer.sdp).unwrap();
                            self.publisher.rtc.sdp_api().accept_answer(pending, answer).unwrap();
                        }
                        Resp::Offer(offer) => {
                            let sdp = SdpOffer::from_sdp_string(&offer.sdp).unwrap();
                            let answer = self.subscriber.rtc.sdp_api().accept_offer(sdp).unwrap();
                            self.request(Req::Answer(lk::SessionDescription {
                                r#type: "answer".into(),
                                sdp: answer.to_sdp_string(),
                                id: offer.id,
                                ..Default::default()
                            }));
                        }
                        _ => {}
                    }
                    self.received.push(message);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.publisher.drive(Duration::from_millis(2)).await;
        self.subscriber.drive(Duration::from_millis(2)).await;
    }

    /// Offers the publisher connection: the data channel, and a video
    /// m-line for `cid` when given (after `add_track`, as livekit-client).
    fn offer(&mut self, cid: Option<&str>) -> Option<Mid> {
        let mut api = self.publisher.rtc.sdp_api();
        api.add_channel("_reliable".into());
        let mid = cid.map(|cid| api.add_media(MediaKind::Video, Direction::SendOnly, Some("s".into()), Some(cid.into()), None));
        let (offer, pending) = api.apply().unwrap();
        self.pending_offer = Some(pending);
        self.request(Req::Offer(lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: 1,
            ..Default::default()
        }));
        mid
    }
}

/// Steps every browser until `done` holds, within the deadline.
async fn until(browsers: &mut [&mut Browser], what: &str, mut done: impl FnMut(&[&mut Browser]) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(browsers) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        for browser in browsers.iter_mut() {
            browser.step().await;
        }
    }
}

async fn video_flows_between_two_browsers(backend: Backend) {
    let server = sfu_server(backend).await;
    let mut alice = Browser::connect(&server, "@alice:localhost:ALICE").await;
    until(&mut [&mut alice], "Alice's join response", |b| !b[0].received.is_empty()).await;
    let Resp::Join(join) = &alice.received[0] else { panic!("first message: {:?}", alice.received[0]) };
    assert_eq!(join.room.as_ref().unwrap().name, "room");
    assert_eq!(join.participant.as_ref().unwrap().identity, "@alice:localhost:ALICE");
    assert!(join.other_participants.is_empty());
    assert!(!join.subscriber_primary, "the publisher connection completes the join");
    assert!(join.ping_interval > 0 && join.ping_timeout > join.ping_interval);
    assert!(join.server_info.as_ref().is_some_and(|info| info.protocol > 0));

    alice.request(Req::PingReq(lk::Ping { timestamp: 4242, rtt: 0 }));
    until(&mut [&mut alice], "a pong", |b| {
        b[0].received.iter().any(|m| matches!(m, Resp::PongResp(p) if p.last_ping_timestamp == 4242))
    })
    .await;

    alice.request(Req::AddTrack(lk::AddTrackRequest {
        cid: "alice-camera".into(),
        r#type: lk::TrackType::Video as i32,
        source: lk::TrackSource::Camera as i32,
        ..Default::default()
    }));
    until(&mut [&mut alice], "track_published", |b| b[0].received.iter().any(|m| matches!(m, Resp::TrackPublished(_)))).await;
    let mid = alice.offer(Some("alice-camera")).unwrap();
    until(&mut [&mut alice], "Alice's publisher connection over UDP", |b| b[0].publisher.connected).await;

    let mut bob = Browser::connect(&server, "@bob:localhost:BOB").await;
    until(&mut [&mut alice, &mut bob], "Bob's join response", |b| !b[1].received.is_empty()).await;
    let Resp::Join(bob_join) = &bob.received[0] else { panic!("Bob's first message: {:?}", bob.received[0]) };
    let alice_seen = bob_join.other_participants.iter().find(|p| p.identity == "@alice:localhost:ALICE");
    assert_eq!(alice_seen.map(|p| p.tracks.len()), Some(1), "Bob's join response lists Alice and her track");
    bob.offer(None);
    until(&mut [&mut alice, &mut bob], "Bob's subscriber offer", |b| b[1].received.iter().any(|m| matches!(m, Resp::Offer(_))))
        .await;

    // Alice sends VP8 packets (a key frame every tenth) until Bob has ten.
    let pt = alice.publisher.rtc.codec_config().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
    let mut seq: u64 = 0;
    let deadline = Instant::now() + DEADLINE;
    while bob.subscriber.rtp_payloads.len() < 10 {
        assert!(Instant::now() < deadline, "Bob received {} packets", bob.subscriber.rtp_payloads.len());
        seq += 1;
        let payload = vec![0x10, if seq % 10 == 1 { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a, seq as u8];
        if let Some(stream) = alice.publisher.rtc.direct_api().stream_tx_by_mid(mid, None) {
            stream.write_rtp(RtpWrite::new(pt, seq.into(), (seq * 3000) as u32, Instant::now(), payload).marker(true));
        }
        alice.step().await;
        bob.step().await;
    }
    assert_eq!(bob.subscriber.rtp_payloads[0][1] & 0x01, 0, "forwarding starts at a key frame");
    assert!(bob.subscriber.rtp_payloads.iter().all(|p| p[..5] == [0x10, p[1], 0x9d, 0x01, 0x2a]));

    // Alice leaves: her WebSocket closes and Bob hears she is gone.
    alice.request(Req::Leave(lk::LeaveRequest::default()));
    until(&mut [&mut alice, &mut bob], "Alice's departure", |b| {
        b[0].closed
            && b[1].received.iter().any(|m| {
                matches!(m, Resp::Update(u) if u.participants.iter().any(|p|
                    p.identity == "@alice:localhost:ALICE" && p.state == lk::participant_info::State::Disconnected as i32))
            })
    })
    .await;
    server.stop().await.unwrap();
}

on_both_backends!(video_flows_between_two_browsers);

/// Runs a livekit-client browser script of tests/livekit (npm, pinned
/// there) against a server with the SFU on; panics with its output when it
/// fails. Needs Node.js, `npm ci` in tests/livekit and Debian's chromium,
/// which ./scripts/test installs.
async fn run_browser_script(backend: Backend, script: &str, extra: &[&str], failure: &str) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/livekit");
    assert!(
        dir.join("node_modules/livekit-client").is_dir() && dir.join("node_modules/playwright-core").is_dir(),
        "livekit-client is not installed: run `npm ci` in {} (./scripts/test does)",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium} (Debian package chromium; ./scripts/test installs it)"
    );
    let server = sfu_server(backend).await;
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let run = tokio::process::Command::new(&node)
        .arg(dir.join(script))
        .current_dir(&dir)
        .args(["--url", &ws_base(&server), "--key", API_KEY, "--secret", API_SECRET])
        .args(extra)
        .env("CHROMIUM", &chromium)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("{script} ends within 120 s"))
        .unwrap_or_else(|e| panic!("cannot run {node:?} ({e}): Node.js 20 or newer is needed"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{failure} ({}): {stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    server.stop().await.unwrap();
}

/// Two headless Chromium pages running livekit-client meet through the
/// SFU: Alice publishes her fake camera with simulcast, Bob receives its
/// video (tests/livekit/meet.mjs).
async fn livekit_client_in_chromium_meets_through_the_sfu(backend: Backend) {
    run_browser_script(backend, "meet.mjs", &["--simulcast", "1"], "Bob did not receive Alice's video").await;
}

on_both_backends!(livekit_client_in_chromium_meets_through_the_sfu);

/// Three Chromium pages each publish camera and microphone (dynacast and
/// adaptive stream on); each sees the others' audio and video decoded and
/// hears them as active speakers; one page closes and the other two see it
/// leave (tests/livekit/call3.mjs).
async fn three_chromium_participants_see_and_hear_each_other(backend: Backend) {
    run_browser_script(backend, "call3.mjs", &[], "the three-participant call failed").await;
}

on_both_backends!(three_chromium_participants_see_and_hear_each_other);
