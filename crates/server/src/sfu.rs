//! The built-in SFU's I/O: the UDP socket and the task that drives the
//! sans-I/O [`chancery_sfu::Sfu`], and the LiveKit signalling routes
//! (`/_chancery/livekit/rtc` WebSocket, `/_chancery/livekit/rtc/validate`).
//!
//! One task owns the `Sfu`; WebSocket sessions talk to it over a bounded
//! command channel and receive their signal messages on a bounded channel
//! of their own. A session that does not keep up with its messages is
//! disconnected rather than buffered without end. `…/rtc/v1` and
//! `…/rtc/v1/validate` are not routed: their 404 makes livekit-client fall
//! back to `…/rtc` (see the `chancery_sfu` crate documentation).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chancery_service::Calls;
use chancery_service::clock::Clock;
use chancery_service::tokens::Entropy;
use chancery_sfu::protocol::SignalRequest;
use chancery_sfu::{
    JoinError, JoinGrant, JoinOptions, LeaveReason, ParticipantKey, Sfu, SfuConfig, SfuEvent, SfuOutput, SfuStats, token,
};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::SfuSection;

/// Where livekit-client's URL points (it appends `/rtc`).
pub const SFU_PATH: &str = "/_chancery/livekit";
/// Largest signal message accepted (an SDP offer with many m-lines is tens
/// of KiB).
const MAX_SIGNAL_BYTES: usize = 256 * 1024;
/// Signal messages queued for one session before it counts as stuck.
const SESSION_QUEUE: usize = 512;
/// Commands queued for the SFU task.
const COMMAND_QUEUE: usize = 4096;
/// Clock skew tolerated on token validity.
const TOKEN_LEEWAY_SECS: i64 = 60;
/// A UDP datagram is at most this big on the paths WebRTC uses.
const MAX_DATAGRAM_BYTES: usize = 2048;
/// How often the SFU task copies its figures out for metrics.
const STATS_EVERY: Duration = Duration::from_millis(500);

enum Command {
    Join {
        grant: JoinGrant,
        options: JoinOptions,
        outbound: mpsc::Sender<Vec<u8>>,
        reply: oneshot::Sender<Result<ParticipantKey, JoinError>>,
    },
    Signal {
        participant: ParticipantKey,
        request: Box<SignalRequest>,
    },
    Disconnect {
        participant: ParticipantKey,
    },
    Present {
        reply: oneshot::Sender<Vec<(String, String)>>,
    },
}

/// The running SFU, shared by its routes.
pub struct SfuService {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<SfuEvent>,
    api_key: String,
    api_secret: String,
    clock: Arc<dyn Clock>,
    /// The SFU's figures, copied out by its task every [`STATS_EVERY`].
    stats: Arc<std::sync::Mutex<SfuStats>>,
    /// Where the UDP socket is bound.
    pub udp_addr: SocketAddr,
}

impl SfuService {
    /// Participants joining and leaving (the call component sends the
    /// delayed leave of a participant that left).
    pub fn subscribe_events(&self) -> broadcast::Receiver<SfuEvent> {
        self.events.subscribe()
    }

    /// The SFU's figures for metrics, at most [`STATS_EVERY`] old.
    pub fn stats(&self) -> SfuStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The room and identity of every participant now (None: the SFU is
    /// stopping).
    pub async fn present(&self) -> Option<Vec<(String, String)>> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Present { reply }).await.ok()?;
        answer.await.ok()
    }

    fn verify(&self, access_token: Option<&str>) -> Result<token::Claims, (StatusCode, String)> {
        let Some(access_token) = access_token else {
            return Err((StatusCode::UNAUTHORIZED, "no access_token".to_owned()));
        };
        let now = (self.clock.now_ms() / 1000) as i64;
        token::verify(access_token, &self.api_key, &self.api_secret, now, TOKEN_LEEWAY_SECS)
            .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))
    }
}

/// The SFU's figures as the metrics listener serves them.
pub fn figures(stats: &SfuStats) -> chancery_api::metrics::SfuFigures {
    let n = |v: usize| v as u64;
    chancery_api::metrics::SfuFigures {
        rooms: n(stats.rooms),
        participants: n(stats.participants),
        published_tracks: n(stats.published_tracks),
        forwarded_tracks: n(stats.forwarded_tracks),
        forwarded_packets: stats.forwarded_packets,
        forwarded_bytes: stats.forwarded_bytes,
        packets_lost: stats.packets_lost,
        over_bitrate_packets: stats.over_bitrate_packets,
        data_forwarded_packets: stats.data_forwarded_packets,
        data_forwarded_bytes: stats.data_forwarded_bytes,
        data_dropped: stats.data_dropped,
    }
}

/// Binds the UDP socket and starts the SFU task; it stops when `shutdown`
/// turns true.
pub async fn start(
    section: &SfuSection,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Arc<SfuService>, JoinHandle<std::io::Result<()>>)> {
    let socket =
        UdpSocket::bind(section.udp_listen).await.with_context(|| format!("binding sfu.udp_listen {}", section.udp_listen))?;
    let bound = socket.local_addr()?;
    let announced = SocketAddr::new(section.public_address.unwrap_or(bound.ip()), bound.port());
    let mut seed = [0u8; 8];
    entropy.fill(&mut seed);
    let config = SfuConfig {
        max_rooms: section.max_rooms,
        max_participants_per_room: section.max_participants_per_room,
        max_tracks_per_participant: section.max_tracks_per_participant,
        max_publisher_bitrate: section.max_publisher_bitrate,
        data_rate: chancery_sfu::DataRate {
            bytes_per_second: section.data_bytes_per_second,
            packets_per_second: section.data_packets_per_second,
        },
        ..SfuConfig::default()
    };
    let sfu = Sfu::new(config, vec![announced], u64::from_le_bytes(seed), std::time::Instant::now(), clock.now_ms() as i64);
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(1024);
    let stats = Arc::new(std::sync::Mutex::new(SfuStats::default()));
    let service = Arc::new(SfuService {
        stats: stats.clone(),
        commands,
        events: events.clone(),
        api_key: section.api_key.clone(),
        api_secret: section.api_secret.clone(),
        clock,
        udp_addr: bound,
    });
    tracing::info!(udp = %bound, announced = %announced, "sfu listening");
    let task = tokio::spawn(async move {
        run(sfu, socket, announced, command_rx, events, stats, &mut shutdown).await;
        Ok(())
    });
    Ok((service, task))
}

/// The SFU task: datagrams, commands and timers in, outputs out.
async fn run(
    mut sfu: Sfu,
    socket: UdpSocket,
    announced: SocketAddr,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<SfuEvent>,
    stats: Arc<std::sync::Mutex<SfuStats>>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut sessions: HashMap<ParticipantKey, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    let mut stats_at = std::time::Instant::now();
    loop {
        let now = std::time::Instant::now();
        if now >= stats_at {
            *stats.lock().unwrap_or_else(|p| p.into_inner()) = sfu.stats();
            stats_at = now + STATS_EVERY;
        }
        let deadline = sfu
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            received = socket.recv_from(&mut buf) => {
                if let Ok((len, source)) = received {
                    sfu.handle_datagram(std::time::Instant::now(), source, announced, &buf[..len]);
                }
            }
            command = commands.recv() => match command {
                None => break,
                Some(Command::Join { grant, options, outbound, reply }) => {
                    let joined = sfu.join(std::time::Instant::now(), grant, options);
                    if let Ok(key) = joined {
                        sessions.insert(key, outbound);
                    }
                    let _ = reply.send(joined);
                }
                Some(Command::Signal { participant, request }) => {
                    if let Err(e) = sfu.handle_signal(std::time::Instant::now(), participant, *request) {
                        tracing::debug!(error = %e, "sfu signal refused");
                    }
                }
                Some(Command::Disconnect { participant }) => sfu.disconnect(std::time::Instant::now(), participant),
                Some(Command::Present { reply }) => {
                    let _ = reply.send(sfu.present());
                }
            },
            () = tokio::time::sleep_until(deadline) => sfu.handle_timeout(std::time::Instant::now()),
        }
        // Outputs, bounded per round; stuck sessions are dropped after it.
        let mut stuck = Vec::new();
        while let Some(output) = sfu.poll_output() {
            match output {
                SfuOutput::Transmit(t) => {
                    // UDP is lossy anyway: a full socket buffer drops the datagram.
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                SfuOutput::Signal { to, message } => {
                    if let Some(session) = sessions.get(&to)
                        && session.try_send(message.encode_to_vec()).is_err()
                    {
                        stuck.push(to);
                    }
                }
                SfuOutput::Event(event) => {
                    if let SfuEvent::Left { participant, reason, .. } = &event {
                        tracing::debug!(?reason, "sfu participant left");
                        // Dropping the sender ends the session's WebSocket
                        // after the messages already queued.
                        sessions.remove(participant);
                    }
                    let _ = events.send(event);
                }
            }
        }
        for participant in stuck {
            sessions.remove(&participant);
            sfu.disconnect(std::time::Instant::now(), participant);
        }
    }
}

/// The signalling routes, to merge into the HTTP router.
pub fn router(service: Arc<SfuService>) -> Router {
    Router::new()
        .route(&format!("{SFU_PATH}/rtc"), get(rtc))
        .route(&format!("{SFU_PATH}/rtc/validate"), get(validate))
        .with_state(service)
}

#[derive(Debug, Deserialize)]
struct RtcParams {
    access_token: Option<String>,
    auto_subscribe: Option<String>,
    adaptive_stream: Option<String>,
}

fn flag(value: Option<&str>, default: bool) -> bool {
    match value {
        Some("1") | Some("true") => true,
        Some("0") | Some("false") => false,
        _ => default,
    }
}

/// `GET …/rtc/validate`: livekit-client asks why its WebSocket failed.
async fn validate(State(service): State<Arc<SfuService>>, Query(params): Query<RtcParams>) -> Response {
    match service.verify(params.access_token.as_deref()) {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `GET …/rtc`: the signal WebSocket. The token is checked and the
/// participant admitted before the upgrade, so a refusal is an HTTP status
/// livekit-client's validate call can explain.
async fn rtc(State(service): State<Arc<SfuService>>, Query(params): Query<RtcParams>, ws: WebSocketUpgrade) -> Response {
    let claims = match service.verify(params.access_token.as_deref()) {
        Ok(claims) => claims,
        Err(refusal) => return refusal.into_response(),
    };
    let options = JoinOptions {
        auto_subscribe: flag(params.auto_subscribe.as_deref(), true),
        adaptive_stream: flag(params.adaptive_stream.as_deref(), false),
    };
    let (outbound, outbound_rx) = mpsc::channel(SESSION_QUEUE);
    let (reply, reply_rx) = oneshot::channel();
    let join = Command::Join { grant: claims.grant(), options, outbound, reply };
    if service.commands.send(join).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the SFU is stopping").into_response();
    }
    let participant = match reply_rx.await {
        Ok(Ok(participant)) => participant,
        Ok(Err(JoinError::RoomFull)) => return (StatusCode::FORBIDDEN, "the room is full").into_response(),
        Ok(Err(JoinError::TooManyRooms)) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many rooms").into_response();
        }
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "the SFU is stopping").into_response(),
    };
    ws.max_message_size(MAX_SIGNAL_BYTES).on_upgrade(move |socket| session(service, participant, socket, outbound_rx))
}

/// Pumps one participant's WebSocket until either side ends it.
async fn session(
    service: Arc<SfuService>,
    participant: ParticipantKey,
    socket: WebSocket,
    mut outbound: mpsc::Receiver<Vec<u8>>,
) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            message = outbound.recv() => match message {
                Some(bytes) => {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                None => break, // the SFU removed the participant
            },
            received = stream.next() => match received {
                Some(Ok(Message::Binary(bytes))) => {
                    // Undecodable messages are dropped; livekit-client sends
                    // protobuf unless configured for JSON, which we do not serve.
                    let Ok(request) = SignalRequest::decode(bytes) else { continue };
                    let command = Command::Signal { participant, request: Box::new(request) };
                    if service.commands.send(command).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = service.commands.send(Command::Disconnect { participant }).await;
    let _ = sink.close().await;
}

/// Feeds the SFU's participant events to the token service until
/// `shutdown`, and runs its keep-alive of delegated delayed leaves: a
/// participant that left has its leave sent at once; one replaced by a new
/// session of its identity (`DuplicateIdentity`, reported before the new
/// session's `Joined`) has not left the call.
/// After missing events (the channel lagged), the token service's view of
/// who is present is replaced by the SFU's own list, and the leaves of
/// delegated participants no longer there are sent.
pub async fn feed_calls(service: Arc<SfuService>, calls: Arc<Calls>, mut shutdown: watch::Receiver<bool>) {
    let mut events = service.subscribe_events();
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            event = events.recv() => match event {
                Ok(SfuEvent::Joined { room, identity, .. }) => calls.participant_joined(&room, &identity),
                Ok(SfuEvent::Left { reason: LeaveReason::DuplicateIdentity, .. }) => {}
                Ok(SfuEvent::Left { room, identity, .. }) => calls.participant_left(&room, &identity).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the token service missed SFU participant events; resynchronising");
                    match service.present().await {
                        Some(present) => calls.resync_participants(present).await,
                        None => break,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = calls.delegations_changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
        wait = calls.keep_delegations_alive().await;
    }
}
