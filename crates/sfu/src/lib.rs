//! Chancery's built-in SFU: a selective forwarding unit that speaks the
//! LiveKit client protocol (the one `livekit-client`, Element Call's media
//! layer, uses), so a call needs no separate LiveKit server.
//!
//! # Shape
//!
//! [`Sfu`] is a sans-I/O state machine, like the `str0m` WebRTC engines it
//! owns: the host feeds it signal messages (decoded `SignalRequest`s from a
//! participant's WebSocket), UDP datagrams and timeouts, each with the current
//! [`Instant`], and drains [`SfuOutput`]s: signal messages to send to one
//! participant, datagrams to send, and [`SfuEvent`]s (a participant joined or
//! left; Chancery sends the leaver's delayed leave event on "left"). Nothing
//! here reads a clock, opens a socket or spawns a task, so tests drive whole
//! calls in memory with simulated peers.
//!
//! Rooms own participants; a participant owns two `str0m` peer connections,
//! as LiveKit's protocol 16/17 "dual PC" mode has them: the *publisher*
//! (the client offers, we answer; we receive its media and data channels)
//! and the *subscriber* (we offer one send-only m-line per forwarded track,
//! the client answers). Media runs in str0m's RTP mode: packets are
//! forwarded, never decoded, so Element Call's end-to-end encrypted frames
//! stay opaque.
//!
//! # What livekit-client does (read from client-sdk-js 2.21, protocol 17)
//!
//! - It first opens `wss://…/rtc/v1?access_token=…&join_request=…` (single
//!   peer connection mode). If that WebSocket fails it fetches
//!   `…/rtc/v1/validate`; a 404 whose body does not say "requested room does
//!   not exist" makes it retry at once on `…/rtc` with dual peer connections
//!   and the query parameters `access_token`, `auto_subscribe`, `sdk`,
//!   `version`, `protocol`, `client_protocol`, `adaptive_stream`, optional
//!   `reconnect`, `sid`, `reconnect_reason`, `os`, `browser`, …  If `/rtc`
//!   fails it fetches `…/rtc/validate`: 401/403 bodies become its "not
//!   allowed" error. The host therefore serves `/rtc` and `/rtc/validate`
//!   and answers 404 on the `v1` paths.
//! - The first message must be a `JoinResponse` (else the join fails). It
//!   reads `room`, `participant` (its own `sid`), `other_participants`,
//!   `ice_servers`, `subscriber_primary`, `fast_publish`, `ping_interval` /
//!   `ping_timeout` (seconds; it then sends `ping_req` every interval and
//!   expects `pong_resp`), `server_info` (or `server_version`),
//!   `client_configuration`.
//! - With `subscriber_primary = false` (what we send) the publisher peer
//!   connection is the one whose connection completes the join, and the
//!   client offers on it right after the join (data channels `_reliable` and
//!   `_lossy`, then media). Before each media offer it sends `add_track`
//!   (`cid` = the browser's `MediaStreamTrack.id`, which is also the msid
//!   track id in its SDP) and waits up to 10 s for `track_published`.
//! - A subscriber offer is handled only once the client has set up its peer
//!   connections, so we offer only after its publisher connection is up
//!   (livekit-server likewise subscribes a participant once it is active).
//!   A received track is mapped to its participant and publication by the
//!   SDP msid: stream id `PA_sid|TR_sid`, track id `TR_sid`; the participant
//!   and track must already be known from a `ParticipantUpdate`, so the
//!   update is sent before the offer. `mid_to_track_id` is sent too.
//! - `ParticipantInfo.version` must not decrease (older updates are
//!   ignored).
//!
//! - `speakers_changed` lists only the speakers whose level changed (and
//!   those gone silent, `active = false`); the client merges them into its
//!   list and emits `ActiveSpeakersChanged`. `connection_quality` carries
//!   `ConnectionQualityInfo`s by participant sid, its own included.
//!   `subscribed_quality_update` is read only with the room option
//!   `dynacast` on: `subscribed_codecs[].codec` is compared with the
//!   track's codec (`vp8`), and encodings whose quality is not enabled are
//!   paused. `subscription` (`UpdateSubscription`) is sent when the app
//!   subscribes or unsubscribes a publication by hand.
//!
//! # Media: receiving, and repairing loss
//!
//! - str0m 0.25 in RTP mode holds one received packet until `poll_output`
//!   returns it as `Event::RtpPacket`; another datagram handed in first
//!   replaces it. The SFU polls a connection right after each datagram
//!   ([`Sfu::handle_datagram`]), and any str0m peer driving it (tests, the
//!   `sfu` benchmark) must do the same or it will miss packets.
//! - A subscriber's NACK is answered by str0m from the subscriber
//!   connection's send buffer (video is written `nackable`; its m-line has
//!   an RTX SSRC), in the subscriber's numbering. A packet the SFU never
//!   received is NACKed toward the publisher by the SFU's publisher
//!   connection, and the repair is forwarded when it comes, in its place.
//!   Downstream NACKs are not passed upstream (as in livekit-server, whose
//!   `DownTrack` answers only from its buffer).
//!
//! What livekit-server does that we copy: ICE-lite on a single UDP port,
//! candidates in the SDP (no TURN), a duplicate identity in a room replaces
//! the older participant (`DUPLICATE_IDENTITY`), ping interval 5 s and
//! timeout 15 s; its active-speaker, connection-quality and dynacast rules
//! and intervals ([`speakers`], [`quality`], [`dynacast`]).

pub mod dynacast;
pub mod forward;
pub mod quality;
mod sfu;
pub mod speakers;
#[cfg(test)]
mod tests;
pub mod token;

pub use livekit_protocol as protocol;
pub use sfu::{
    DataRate, JoinError, JoinGrant, JoinOptions, LeaveReason, MAX_DATA_PACKET_BYTES, ParticipantKey, Sfu, SfuConfig, SfuEvent,
    SfuOutput, SfuStats, SignalError, Transmit,
};
pub use str0m;
