//! `sfu`: Chancery's built-in SFU forwarding calls on loopback. For each
//! size `PxM`, P publishers and M subscribers join one call the way Element
//! Call's participants do (an OpenID token from the homeserver, a LiveKit
//! token from its `/livekit/jwt/sfu/get`, the LiveKit signal WebSocket, two
//! WebRTC peer connections each). Every participant is a `str0m` peer (the
//! crate the SFU itself uses) in RTP mode, over its own UDP sockets.
//!
//! Each publisher sends a camera-like VP8 stream (30 frames a second of 4
//! packets, about 1 Mbit/s of payload, a key frame every 2 s and whenever
//! asked) and an Opus-like audio stream (50 packets a second of 80 bytes).
//! Publishers subscribe to nothing (`auto_subscribe=0`); each subscriber is
//! sent all 2·P tracks. Every packet carries its publisher, its track and
//! its send time (nanoseconds on this process's clock, which both ends
//! share), so a subscriber measures each packet's delay.
//!
//! Once every subscriber has received video and audio from every publisher,
//! a window of `--sfu-seconds` is measured: packets sent in it against
//! packets received (loss), delays (p50/p99), received bitrate, the
//! server's CPU time (`/proc/<pid>/stat` utime + stime, in clock ticks of
//! 10 ms) per forwarded packet and in cores, and the server's memory growth
//! per participant (`VmRSS` before the joins and with the call running).
//!
//! The delay is publisher write → subscriber read *through* the SFU: it
//! includes both client peers' SRTP and the client's scheduling on the
//! same cores, so it is an upper bound on what the SFU adds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

use super::{Ctx, bounded};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

const VIDEO_FPS: u64 = 30;
const VIDEO_PACKETS_PER_FRAME: usize = 4;
/// 4 × 1,042 bytes × 30 frames = 1.0 Mbit/s of payload.
const VIDEO_PACKET_BYTES: usize = 1_042;
const KEYFRAME_EVERY: u64 = 2 * VIDEO_FPS;
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
const AUDIO_PACKET_BYTES: usize = 80;
/// Our header inside every payload, after the 5 bytes a VP8 payload
/// descriptor and frame header take: magic, publisher, track, send time.
const HEADER_AT: usize = 5;
const MAGIC: &[u8; 4] = b"CHB1";
const HEADER_END: usize = HEADER_AT + 4 + 2 + 1 + 8;
const VIDEO: u8 = 0;
const AUDIO: u8 = 1;
/// Delays kept per subscriber (a 60 s window at 8×… stays far below).
const MAX_SAMPLES_PER_SUBSCRIBER: usize = 2_000_000;
/// Bounds on the phases of one size.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ: 100 on Linux).
const CLK_TCK: f64 = 100.0;
/// A loss at or under this fraction counts as no loss growth.
const LOSS_OK: f64 = 0.01;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let sizes = ctx.sizes.sfu_sizes.clone();
    let seconds = ctx.sizes.sfu_seconds;
    let Some(pid) = ctx.server.pid else { bail!("`sfu` reads the server's CPU time and memory: give --pid") };
    if sizes.is_empty() {
        bail!("--sfu-sizes is empty");
    }
    o.param("sizes", sizes.iter().map(|(p, m)| format!("{p}x{m}")).collect::<Vec<_>>().join(","));
    o.param("window_s", seconds);
    o.param("video", format!("VP8-like, {VIDEO_FPS} fps × {VIDEO_PACKETS_PER_FRAME} packets × {VIDEO_PACKET_BYTES} B"));
    o.param("audio", format!("Opus-like, 50 pps × {AUDIO_PACKET_BYTES} B"));
    let most = sizes.iter().map(|(p, m)| p + m).max().unwrap_or(0);
    let users = ctx.pool_users(most).await?;
    let mut best: Option<usize> = None;
    let mut verified = Vec::new();
    ctx.measure_begin();
    for (publishers, subscribers) in sizes {
        let tag = format!("p{publishers}x{subscribers}");
        eprintln!("[{}] sfu {tag} ...", ctx.server.label);
        let step = run_size(ctx, pid, &users[..publishers + subscribers], publishers, subscribers, seconds).await?;
        let streams = publishers * subscribers;
        o.figure(format!("{tag}_latency_p50_ms"), step.latency.percentile(50.0)?, Better::Lower);
        o.figure(format!("{tag}_latency_p99_ms"), step.latency.percentile(99.0)?, Better::Lower);
        o.figure(format!("{tag}_loss_pct"), step.loss * 100.0, Better::Lower);
        o.figure(format!("{tag}_video_loss_pct"), step.video_loss * 100.0, Better::Lower);
        o.figure(format!("{tag}_audio_loss_pct"), step.audio_loss * 100.0, Better::Lower);
        o.figure(format!("{tag}_received_mbit_per_s_per_subscriber"), step.received_mbit_per_s, Better::Higher);
        o.figure(format!("{tag}_forwarded_packets_per_s"), step.forwarded_per_s, Better::Higher);
        o.figure(format!("{tag}_server_cpu_cores"), step.cpu_cores, Better::Lower);
        o.figure(format!("{tag}_server_cpu_us_per_packet"), step.cpu_us_per_packet, Better::Lower);
        o.figure(format!("{tag}_av_streams_per_core"), streams as f64 / step.cpu_cores.max(1e-9), Better::Higher);
        o.figure(format!("{tag}_rss_per_participant_kb"), step.rss_per_participant_kb, Better::Lower);
        if step.loss <= LOSS_OK {
            best = Some(best.map_or(streams, |b| b.max(streams)));
        }
        verified.push(format!(
            "{tag}: every subscriber received video and audio of every publisher, {} packets checked",
            step.latency.len()
        ));
    }
    ctx.measure_end("sfu", o).await;
    o.figure("max_av_streams_under_1pct_loss", best.unwrap_or(0) as f64, Better::Higher);
    o.verified = verified.join("; ");
    Ok(())
}

struct StepFigures {
    latency: Samples,
    loss: f64,
    video_loss: f64,
    audio_loss: f64,
    received_mbit_per_s: f64,
    forwarded_per_s: f64,
    cpu_cores: f64,
    cpu_us_per_packet: f64,
    rss_per_participant_kb: f64,
}

/// What the participants of one size share: the clock, the window, the
/// stop flag and the counts.
struct Shared {
    epoch: Instant,
    publishers: usize,
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    stop: AtomicBool,
    ready_subscribers: AtomicUsize,
    /// Packets sent in the window, video and audio.
    sent_in_window: [AtomicU64; 2],
}

impl Shared {
    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start_ns.load(Ordering::Relaxed) && ns < self.window_end_ns.load(Ordering::Relaxed)
    }
}

async fn run_size(
    ctx: &Ctx,
    pid: u32,
    users: &[crate::client::Session],
    publishers: usize,
    subscribers: usize,
    seconds: u64,
) -> Result<StepFigures> {
    // A room of its own for each size, so no participant of the previous
    // one is still in the SFU's room.
    let room = ctx.server.create_room(&users[0], "bench sfu", ctx.sizes.room_version.as_deref()).await?;
    let server = ctx.server.clone();
    let tokens = bounded(users.to_vec(), ctx.sizes.setup_concurrency, move |u| {
        let (server, room) = (server.clone(), room.clone());
        async move { server.livekit_token(&u, &room).await }
    })
    .await?;
    let rss_before = crate::rss::rss_kb(pid)?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        publishers,
        window_start_ns: AtomicU64::new(u64::MAX),
        window_end_ns: AtomicU64::new(u64::MAX),
        stop: AtomicBool::new(false),
        ready_subscribers: AtomicUsize::new(0),
        sent_in_window: [AtomicU64::new(0), AtomicU64::new(0)],
    });
    let bound = JOIN_DEADLINE + Duration::from_secs(seconds) + STOP_DEADLINE;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (url, jwt)) in tokens.into_iter().enumerate() {
        let role = if i < publishers { Role::Publisher(i as u16) } else { Role::Subscriber };
        let shared = shared.clone();
        tasks.spawn(async move { participant(shared, role, url, jwt, bound).await.with_context(|| format!("participant {i}")) });
    }
    let joined_by = Instant::now() + JOIN_DEADLINE;
    while shared.ready_subscribers.load(Ordering::Relaxed) < subscribers {
        if Instant::now() > joined_by {
            shared.stop.store(true, Ordering::Relaxed);
            let ready = shared.ready_subscribers.load(Ordering::Relaxed);
            let failure = match tasks.try_join_next() {
                Some(Ok(Err(e))) => format!(": {e:#}"),
                _ => String::new(),
            };
            bail!("only {ready} of {subscribers} subscribers received every track within {JOIN_DEADLINE:?}{failure}");
        }
        if let Some(Ok(Err(e))) = tasks.try_join_next() {
            shared.stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settle, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_loaded = crate::rss::rss_kb(pid)?;
    let cpu_start = cpu_ticks(pid)?;
    let started = Instant::now();
    shared.window_start_ns.store(shared.ns(started), Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let ended = Instant::now();
    shared.window_end_ns.store(shared.ns(ended), Ordering::Relaxed);
    let cpu_end = cpu_ticks(pid)?;
    // Packets sent at the end of the window are still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    let stop_by = tokio::time::Instant::now() + STOP_DEADLINE;
    while let Some(joined) = tokio::time::timeout_at(stop_by, tasks.join_next()).await.context("participants did not stop")? {
        reports.push(joined.context("a participant task panicked")??);
    }

    let wall = ended.duration_since(started).as_secs_f64();
    let mut latency = Samples::new();
    let (mut received, mut bytes) = ([0u64; 2], 0u64);
    for r in &reports {
        if r.bad_packets > 0 {
            bail!("a subscriber received {} packets that are not the benchmark's", r.bad_packets);
        }
        if let Role::Subscriber = r.role
            && (r.video_from.iter().any(|s| !s) || r.audio_from.iter().any(|s| !s))
        {
            bail!("a subscriber did not receive every publisher's video and audio");
        }
        received[0] += r.received_in_window[0];
        received[1] += r.received_in_window[1];
        bytes += r.bytes_in_window;
        for us in &r.latencies_us {
            latency.push_ms(f64::from(*us) / 1000.0);
        }
    }
    let expected = shared.sent_in_window.each_ref().map(|n| n.load(Ordering::Relaxed) * subscribers as u64);
    if expected.contains(&0) {
        bail!("no video or no audio packet was sent in the window");
    }
    let loss_of = |kind: usize| 1.0 - (received[kind] as f64 / expected[kind] as f64).min(1.0);
    let (expected, received) = (expected[0] + expected[1], received[0] + received[1]);
    let cpu_s = (cpu_end - cpu_start) as f64 / CLK_TCK;
    Ok(StepFigures {
        latency,
        loss: 1.0 - (received as f64 / expected as f64).min(1.0),
        video_loss: loss_of(usize::from(VIDEO)),
        audio_loss: loss_of(usize::from(AUDIO)),
        received_mbit_per_s: bytes as f64 * 8.0 / 1e6 / wall / subscribers as f64,
        forwarded_per_s: received as f64 / wall,
        cpu_cores: cpu_s / wall,
        cpu_us_per_packet: cpu_s * 1e6 / received.max(1) as f64,
        rss_per_participant_kb: rss_loaded.saturating_sub(rss_before) as f64 / (publishers + subscribers) as f64,
    })
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) of the whole line; `rest` starts at field 3.
    let field = |n: usize| -> Result<u64> {
        fields.get(n - 3).ok_or_else(|| anyhow!("{path}: too few fields"))?.parse().with_context(|| format!("{path} field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher(u16),
    Subscriber,
}

struct Report {
    role: Role,
    latencies_us: Vec<u32>,
    /// Video and audio packets received that were sent in the window.
    received_in_window: [u64; 2],
    bytes_in_window: u64,
    bad_packets: u64,
    video_from: Vec<bool>,
    audio_from: Vec<bool>,
}

struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    /// Events polled out while receiving, handed out by the next `drive`.
    events: Vec<Event>,
    /// Datagrams polled out while receiving that the socket could not take
    /// at once; `drive` sends them.
    outbox: Vec<(Vec<u8>, SocketAddr)>,
}

impl Peer {
    async fn new() -> Result<Peer> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").map_err(|e| anyhow!("candidate: {e}"))?);
        Ok(Peer { rtc, socket, addr, events: Vec::new(), outbox: Vec::new() })
    }

    /// Hands one datagram to str0m and polls it at once: in RTP mode str0m
    /// keeps a received packet in a single slot until `poll_output` hands
    /// it out as `Event::RtpPacket`, so the next datagram handed in before
    /// that poll would replace it (the first version of this benchmark lost
    /// most packets of each frame that way and reported it as loss).
    fn receive(&mut self, source: SocketAddr, contents: &[u8]) -> Result<()> {
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.addr, contents) else {
            return Ok(());
        };
        self.rtc.handle_input(Input::Receive(Instant::now(), receive)).map_err(|e| anyhow!("str0m: {e}"))?;
        self.poll()?;
        Ok(())
    }

    /// Polls str0m until it waits: events kept, datagrams sent if the
    /// socket takes them now, else queued. Returns when it wants the next
    /// timeout.
    fn poll(&mut self) -> Result<Instant> {
        for _ in 0..100_000 {
            match self.rtc.poll_output().map_err(|e| anyhow!("str0m: {e}"))? {
                Output::Timeout(at) => return Ok(at),
                Output::Transmit(t) => {
                    if !self.outbox.is_empty() || self.socket.try_send_to(&t.contents, t.destination).is_err() {
                        self.outbox.push((t.contents.into(), t.destination));
                    }
                }
                Output::Event(event) => self.events.push(event),
            }
        }
        Ok(Instant::now())
    }

    /// Runs str0m until it waits, sending its datagrams; returns its events
    /// and when it wants the next timeout.
    async fn drive(&mut self, events: &mut Vec<Event>) -> Result<Instant> {
        self.rtc.handle_input(Input::Timeout(Instant::now())).map_err(|e| anyhow!("str0m: {e}"))?;
        let at = self.poll()?;
        for (contents, destination) in self.outbox.drain(..) {
            let _ = self.socket.send_to(&contents, destination).await;
        }
        events.append(&mut self.events);
        Ok(at)
    }
}

/// Our header: magic, publisher, track, send time.
fn write_header(payload: &mut [u8], publisher: u16, track: u8, sent_ns: u64) {
    payload[HEADER_AT..HEADER_AT + 4].copy_from_slice(MAGIC);
    payload[HEADER_AT + 4..HEADER_AT + 6].copy_from_slice(&publisher.to_le_bytes());
    payload[HEADER_AT + 6] = track;
    payload[HEADER_AT + 7..HEADER_END].copy_from_slice(&sent_ns.to_le_bytes());
}

fn read_header(payload: &[u8]) -> Option<(u16, u8, u64)> {
    if payload.len() < HEADER_END || &payload[HEADER_AT..HEADER_AT + 4] != MAGIC {
        return None;
    }
    let publisher = u16::from_le_bytes(payload[HEADER_AT + 4..HEADER_AT + 6].try_into().ok()?);
    let sent = u64::from_le_bytes(payload[HEADER_AT + 7..HEADER_END].try_into().ok()?);
    Some((publisher, payload[HEADER_AT + 6], sent))
}

/// The media a publisher sends, and where it is in it.
struct Media {
    index: u16,
    video: Mid,
    audio: Mid,
    video_pt: str0m::media::Pt,
    audio_pt: str0m::media::Pt,
    frame: u64,
    video_seq: u64,
    audio_seq: u64,
    keyframe_asked: bool,
    next_video: Instant,
    next_audio: Instant,
}

impl Media {
    fn video_interval() -> Duration {
        Duration::from_nanos(1_000_000_000 / VIDEO_FPS)
    }

    /// Sends what is due now; returns when the next packet is due.
    fn send_due(&mut self, rtc: &mut Rtc, shared: &Shared) -> Instant {
        let now = Instant::now();
        // Fallen far behind (a stalled task): resume now rather than burst.
        if now.saturating_duration_since(self.next_video) > Duration::from_millis(200) {
            self.next_video = now;
        }
        if now.saturating_duration_since(self.next_audio) > Duration::from_millis(200) {
            self.next_audio = now;
        }
        while self.next_video <= now {
            let keyframe = self.frame.is_multiple_of(KEYFRAME_EVERY) || std::mem::take(&mut self.keyframe_asked);
            let sent = shared.ns(now);
            let time = (self.frame * 90_000 / VIDEO_FPS) as u32;
            let mut api = rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(self.video, None) else { break };
            for i in 0..VIDEO_PACKETS_PER_FRAME {
                let mut payload = vec![0u8; VIDEO_PACKET_BYTES];
                if i == 0 {
                    // VP8 payload descriptor (S=1, PID 0) and frame header
                    // (P clear on a key frame): what the SFU looks at.
                    payload[..5].copy_from_slice(&[0x10, if keyframe { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
                }
                write_header(&mut payload, self.index, VIDEO, sent);
                self.video_seq += 1;
                let last = i + 1 == VIDEO_PACKETS_PER_FRAME;
                stream.write_rtp(RtpWrite::new(self.video_pt, self.video_seq.into(), time, now, payload).marker(last));
                if shared.in_window(sent) {
                    shared.sent_in_window[usize::from(VIDEO)].fetch_add(1, Ordering::Relaxed);
                }
            }
            self.frame += 1;
            self.next_video += Self::video_interval();
        }
        while self.next_audio <= now {
            let sent = shared.ns(now);
            let mut api = rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(self.audio, None) else { break };
            let mut payload = vec![0u8; AUDIO_PACKET_BYTES];
            write_header(&mut payload, self.index, AUDIO, sent);
            self.audio_seq += 1;
            stream.write_rtp(RtpWrite::new(self.audio_pt, self.audio_seq.into(), (self.audio_seq * 960) as u32, now, payload));
            if shared.in_window(sent) {
                shared.sent_in_window[usize::from(AUDIO)].fetch_add(1, Ordering::Relaxed);
            }
            self.next_audio += AUDIO_INTERVAL;
        }
        self.next_video.min(self.next_audio)
    }
}

fn request(message: Req) -> Message {
    Message::Binary(lk::SignalRequest { message: Some(message) }.encode_to_vec().into())
}

/// One call participant from its WebSocket to its leave; bounded by `bound`.
async fn participant(shared: Arc<Shared>, role: Role, url: String, jwt: String, bound: Duration) -> Result<Report> {
    let deadline = Instant::now() + bound;
    let auto_subscribe = if role == Role::Subscriber { 1 } else { 0 };
    let ws_url = format!("{url}/rtc?access_token={jwt}&auto_subscribe={auto_subscribe}&protocol=16&sdk=rust&adaptive_stream=0");
    let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.context("signal WebSocket")?;
    let (mut sink, mut stream) = ws.split();
    let mut publisher = Peer::new().await?;
    let mut subscriber = Peer::new().await?;
    let mut report = Report {
        role,
        latencies_us: Vec::new(),
        received_in_window: [0, 0],
        bytes_in_window: 0,
        bad_packets: 0,
        video_from: vec![false; shared.publishers],
        audio_from: vec![false; shared.publishers],
    };
    let mut ready = false;
    let mut pending_offer: Option<SdpPendingOffer> = None;
    let mut published = 0;
    let mut mids: Option<(Mid, Mid)> = None;
    let mut media: Option<Media> = None;
    let mut next_ping = Instant::now() + Duration::from_secs(5);
    let mut events = Vec::new();
    let (mut buf_p, mut buf_s) = (vec![0u8; 2048], vec![0u8; 2048]);

    enum Wake {
        Signal(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
        Publisher(std::io::Result<(usize, SocketAddr)>),
        Subscriber(std::io::Result<(usize, SocketAddr)>),
        Timer,
    }

    while !shared.stop.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            bail!("still running at its deadline");
        }
        // Outputs and events of both connections.
        let mut wake_at = publisher.drive(&mut events).await?;
        for event in events.drain(..) {
            match event {
                Event::Connected => {
                    if let (Some((video, audio)), Role::Publisher(index)) = (mids, role) {
                        let pt = |codec| publisher.rtc.codec_config().find(|p| p.spec().codec == codec).map(|p| p.pt());
                        let now = Instant::now();
                        media = Some(Media {
                            index,
                            video,
                            audio,
                            video_pt: pt(Codec::Vp8).ok_or_else(|| anyhow!("no VP8"))?,
                            audio_pt: pt(Codec::Opus).ok_or_else(|| anyhow!("no Opus"))?,
                            frame: 0,
                            video_seq: 0,
                            audio_seq: 0,
                            keyframe_asked: false,
                            next_video: now,
                            next_audio: now,
                        });
                    }
                }
                Event::KeyframeRequest(_) => {
                    if let Some(m) = media.as_mut() {
                        m.keyframe_asked = true;
                    }
                }
                _ => {}
            }
        }
        wake_at = wake_at.min(subscriber.drive(&mut events).await?);
        for event in events.drain(..) {
            let Event::RtpPacket(packet) = event else { continue };
            let Some((from, track, sent)) = read_header(&packet.payload) else {
                report.bad_packets += 1;
                continue;
            };
            let Some(seen) = (match track {
                VIDEO => report.video_from.get_mut(from as usize),
                AUDIO => report.audio_from.get_mut(from as usize),
                _ => None,
            }) else {
                report.bad_packets += 1;
                continue;
            };
            *seen = true;
            if !ready && report.video_from.iter().chain(&report.audio_from).all(|s| *s) {
                ready = true;
                shared.ready_subscribers.fetch_add(1, Ordering::Relaxed);
            }
            if shared.in_window(sent) {
                report.received_in_window[usize::from(track)] += 1;
                report.bytes_in_window += packet.payload.len() as u64;
                if report.latencies_us.len() < MAX_SAMPLES_PER_SUBSCRIBER {
                    let delay = shared.ns(Instant::now()).saturating_sub(sent);
                    report.latencies_us.push((delay / 1000).min(u64::from(u32::MAX)) as u32);
                }
            }
        }
        if let Some(m) = media.as_mut() {
            wake_at = wake_at.min(m.send_due(&mut publisher.rtc, &shared));
            // Out now, not at the next wake-up.
            wake_at = wake_at.min(publisher.drive(&mut events).await?);
            events.retain(|e| matches!(e, Event::KeyframeRequest(_)));
            if !events.is_empty() {
                m.keyframe_asked = true;
                events.clear();
            }
        }
        if Instant::now() >= next_ping {
            sink.send(request(Req::PingReq(lk::Ping { timestamp: 0, rtt: 0 }))).await?;
            next_ping += Duration::from_secs(5);
        }
        // Short naps keep the stop flag and the window read often.
        wake_at = wake_at.min(next_ping).min(Instant::now() + Duration::from_millis(50));

        let wake = tokio::select! {
            message = stream.next() => Wake::Signal(message),
            received = publisher.socket.recv_from(&mut buf_p) => Wake::Publisher(received),
            received = subscriber.socket.recv_from(&mut buf_s) => Wake::Subscriber(received),
            () = tokio::time::sleep_until(wake_at.into()) => Wake::Timer,
        };
        match wake {
            Wake::Signal(Some(Ok(Message::Binary(bytes)))) => {
                let response = lk::SignalResponse::decode(bytes).context("a signal message")?;
                match response.message {
                    Some(Resp::Join(_)) => match role {
                        Role::Publisher(_) => {
                            for (cid, kind) in [("v", lk::TrackType::Video), ("a", lk::TrackType::Audio)] {
                                let add = lk::AddTrackRequest {
                                    cid: cid.into(),
                                    name: cid.into(),
                                    r#type: kind as i32,
                                    source: if kind == lk::TrackType::Video {
                                        lk::TrackSource::Camera
                                    } else {
                                        lk::TrackSource::Microphone
                                    } as i32,
                                    ..Default::default()
                                };
                                sink.send(request(Req::AddTrack(add))).await?;
                            }
                        }
                        Role::Subscriber => {
                            pending_offer = Some(offer(&mut publisher.rtc, &mut sink, false).await?.0);
                        }
                    },
                    Some(Resp::TrackPublished(_)) => {
                        published += 1;
                        if published == 2 {
                            let (pending, media_mids) = offer(&mut publisher.rtc, &mut sink, true).await?;
                            pending_offer = Some(pending);
                            mids = media_mids;
                        }
                    }
                    Some(Resp::Answer(answer)) => {
                        let pending = pending_offer.take().ok_or_else(|| anyhow!("an answer without an offer"))?;
                        let answer = SdpAnswer::from_sdp_string(&answer.sdp).map_err(|e| anyhow!("answer: {e}"))?;
                        publisher.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| anyhow!("answer: {e}"))?;
                    }
                    Some(Resp::Offer(offer)) => {
                        let sdp = SdpOffer::from_sdp_string(&offer.sdp).map_err(|e| anyhow!("offer: {e}"))?;
                        let answer = subscriber.rtc.sdp_api().accept_offer(sdp).map_err(|e| anyhow!("offer: {e}"))?;
                        let answer = lk::SessionDescription {
                            r#type: "answer".into(),
                            sdp: answer.to_sdp_string(),
                            id: offer.id,
                            ..Default::default()
                        };
                        sink.send(request(Req::Answer(answer))).await?;
                    }
                    Some(Resp::Leave(leave)) => bail!("the SFU ended the session ({leave:?})"),
                    _ => {}
                }
            }
            Wake::Signal(Some(Ok(_))) => {}
            Wake::Signal(Some(Err(e))) => return Err(e).context("signal WebSocket"),
            Wake::Signal(None) => bail!("the SFU closed the signal WebSocket"),
            Wake::Publisher(received) => {
                let (len, source) = received?;
                publisher.receive(source, &buf_p[..len])?;
                for _ in 0..64 {
                    let Ok((len, source)) = publisher.socket.try_recv_from(&mut buf_p) else { break };
                    publisher.receive(source, &buf_p[..len])?;
                }
            }
            Wake::Subscriber(received) => {
                let (len, source) = received?;
                subscriber.receive(source, &buf_s[..len])?;
                for _ in 0..64 {
                    let Ok((len, source)) = subscriber.socket.try_recv_from(&mut buf_s) else { break };
                    subscriber.receive(source, &buf_s[..len])?;
                }
            }
            Wake::Timer => {}
        }
    }
    let _ = sink.send(request(Req::Leave(lk::LeaveRequest::default()))).await;
    let _ = sink.close().await;
    Ok(report)
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// The publisher connection's offer, as livekit-client makes it: its data
/// channels, and (publishing) a video and an audio m-line whose msid track
/// ids are the `cid`s of the `add_track` requests.
async fn offer(rtc: &mut Rtc, sink: &mut Sink, media: bool) -> Result<(SdpPendingOffer, Option<(Mid, Mid)>)> {
    let mut api = rtc.sdp_api();
    api.add_channel("_reliable".into());
    let mids = media.then(|| {
        let video = api.add_media(MediaKind::Video, Direction::SendOnly, Some("bench".into()), Some("v".into()), None);
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, Some("bench".into()), Some("a".into()), None);
        (video, audio)
    });
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("nothing to offer"))?;
    let description = lk::SessionDescription { r#type: "offer".into(), sdp: offer.to_sdp_string(), id: 1, ..Default::default() };
    sink.send(request(Req::Offer(description))).await?;
    Ok((pending, mids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_foreign_payloads() {
        let mut payload = vec![0u8; 40];
        write_header(&mut payload, 3, AUDIO, 123_456_789);
        assert_eq!(read_header(&payload), Some((3, AUDIO, 123_456_789)));
        assert_eq!(read_header(&payload[..HEADER_END - 1]), None);
        payload[HEADER_AT] = b'X';
        assert_eq!(read_header(&payload), None);
    }
}
