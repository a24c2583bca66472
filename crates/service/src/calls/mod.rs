//! The calls component: the MatrixRTC token service Element Call asks for
//! a LiveKit access token, compatible with element-hq/lk-jwt-service and
//! served by this process (`<public_baseurl>/livekit/jwt`, advertised as
//! the `livekit_service_url` of MSC4143's transports).
//!
//! `POST …/sfu/get` (legacy body `{room, openid_token, device_id}`) and
//! `POST …/get_token` (`{room_id, slot_id, openid_token, member}`) answer
//! `{url, jwt}`: the LiveKit WebSocket URL and an access token for the
//! slot's LiveKit room ([`token`]). The OpenID token is validated against
//! the store directly ([`OpenId`]) when it names this server. A token of
//! another server would need its `/_matrix/federation/v1/openid/userinfo`,
//! and this server has no federation client yet: it is answered as
//! lk-jwt-service answers a token it cannot verify (401 `M_UNAUTHORIZED`).
//!
//! `POST …/delegate_delayed_leave` hands this service a member's delayed
//! leave event (MSC4140) to keep alive while the member is on the built-in
//! SFU and to send the moment it leaves ([`delegation`]). It is honoured
//! only when the tokens are for the built-in SFU (whose participant events
//! the server feeds to [`Calls::participant_joined`] and
//! [`Calls::participant_left`]) and delayed events are enabled; otherwise
//! it is refused with 403 `M_FORBIDDEN`, lk-jwt-service's answer to a user
//! it does not delegate for, and the client keeps its own restarts. The
//! deprecated `delay_id`/`delay_timeout` of `/sfu/get` and `/get_token` are
//! refused with 400 `M_BAD_JSON` (lk-jwt-service's answer when it does not
//! delegate); Element Call then asks again without them.

pub mod delegation;
pub mod token;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chancery_proto::limits::MAX_CALL_FIELD_BYTES;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::Error;
use crate::clock::Clock;
use crate::delayed_events::{Action, DelayedEvents};
use crate::openid::OpenId;
use delegation::{Delegations, Refusal};

/// The longest the keep-alive task sleeps between looks at the
/// delegations (a new one or a join wakes it earlier).
const MAX_KEEP_ALIVE_SLEEP_MS: u64 = 1_000;

/// The operator's `[calls]` configuration.
#[derive(Debug, Clone)]
pub struct CallsConfig {
    /// The LiveKit WebSocket URL handed to clients (`wss://…`).
    pub livekit_url: String,
    pub livekit_api_key: String,
    pub livekit_api_secret: String,
    /// Where this token service is reached, as MSC4143 advertises it.
    pub livekit_service_url: String,
    /// Users of these servers get `roomCreate` (lk-jwt-service's "full
    /// access" homeservers); `*` alone means every server.
    pub room_create_servers: Vec<String>,
}

/// An OpenID token as Element Call forwards it (matrix-js-sdk's
/// `IOpenIDToken`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenIdTokenBody {
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub matrix_server_name: String,
    #[serde(default)]
    pub expires_in: i64,
}

/// The MatrixRTC member asking (`/get_token`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub claimed_user_id: String,
    #[serde(default)]
    pub claimed_device_id: String,
}

/// `POST …/sfu/get` (lk-jwt-service's `LegacySFURequest`; unknown fields
/// are refused as there).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySfuRequest {
    #[serde(default)]
    pub room: String,
    #[serde(default)]
    pub openid_token: OpenIdTokenBody,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub delay_id: String,
    #[serde(default)]
    pub delay_timeout: i64,
    #[serde(default)]
    pub delay_cs_api_url: String,
}

/// `POST …/get_token` (lk-jwt-service's `SFURequest`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfuRequest {
    #[serde(default)]
    pub room_id: String,
    #[serde(default)]
    pub slot_id: String,
    #[serde(default)]
    pub openid_token: OpenIdTokenBody,
    #[serde(default)]
    pub member: MemberBody,
    #[serde(default)]
    pub delay_id: String,
    #[serde(default)]
    pub delay_timeout: i64,
    #[serde(default)]
    pub delay_cs_api_url: String,
}

/// `POST …/delegate_delayed_leave` (lk-jwt-service's
/// `DelegateDelayedLeaveRequest`): the fields of [`SfuRequest`];
/// `delay_cs_api_url` is ignored, as by lk-jwt-service (the event is this
/// server's).
pub type DelegateRequest = SfuRequest;

/// The answer of both endpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SfuAnswer {
    pub url: String,
    pub jwt: String,
}

/// The fields `/get_token` and `/delegate_delayed_leave` both require, by
/// the names their errors give.
fn required_fields(req: &SfuRequest) -> [(&'static str, &str); 7] {
    let (token, member) = (&req.openid_token, &req.member);
    [
        ("room_id", &req.room_id),
        ("slot_id", &req.slot_id),
        ("member.id", &member.id),
        ("member.claimed_user_id", &member.claimed_user_id),
        ("member.claimed_device_id", &member.claimed_device_id),
        ("openid_token.access_token", &token.access_token),
        ("openid_token.matrix_server_name", &token.matrix_server_name),
    ]
}

/// Checks a request's fields as lk-jwt-service's `Validate` does (400
/// `M_BAD_JSON`), and bounds their length.
fn check_fields(required: &[(&str, &str)], delay_id: &str, delay_timeout: i64) -> Result<(), Error> {
    if let Some((name, _)) = required.iter().find(|(_, value)| value.is_empty()) {
        return Err(Error::BadJson(format!("the request body is missing `{name}`")));
    }
    if let Some((name, _)) = required.iter().find(|(_, value)| value.len() > MAX_CALL_FIELD_BYTES) {
        return Err(Error::BadJson(format!("`{name}` is longer than {MAX_CALL_FIELD_BYTES} bytes")));
    }
    let any_delay = !delay_id.is_empty() || delay_timeout > 0;
    let all_delay = !delay_id.is_empty() && delay_timeout > 0;
    if any_delay && !all_delay {
        return Err(Error::BadJson("the request body is missing `delay_id` or `delay_timeout`".into()));
    }
    if all_delay {
        return Err(Error::BadJson("delegation in a token request is not supported: use `delegate_delayed_leave`".into()));
    }
    Ok(())
}

/// Whether users of `server_name` may create LiveKit rooms.
pub fn may_create_rooms(room_create_servers: &[String], server_name: &str) -> bool {
    matches!(room_create_servers, [only] if only == "*") || room_create_servers.iter().any(|s| s == server_name)
}

/// lk-jwt-service's answer to a token it cannot verify, whatever the
/// reason (unknown, expired, another server's, another user's).
fn unauthorised() -> Error {
    Error::Unauthorized("The request could not be authorised.".into())
}

/// What [`Calls`] is built from.
pub struct CallsDeps {
    pub config: CallsConfig,
    pub openid: Arc<OpenId>,
    pub clock: Arc<dyn Clock>,
    /// Present when delayed leaves can be delegated: the tokens are for
    /// the built-in SFU (whose participant events reach this component)
    /// and delayed events are enabled.
    pub delayed_events: Option<Arc<DelayedEvents>>,
}

/// The token service.
pub struct Calls {
    config: CallsConfig,
    openid: Arc<OpenId>,
    clock: Arc<dyn Clock>,
    delayed_events: Option<Arc<DelayedEvents>>,
    delegations: Mutex<Delegations>,
    /// Wakes the keep-alive task: a delegation or a participant arrived.
    changed: Notify,
}

impl Calls {
    pub fn new(deps: CallsDeps) -> Self {
        Self {
            config: deps.config,
            openid: deps.openid,
            clock: deps.clock,
            delayed_events: deps.delayed_events,
            delegations: Mutex::new(Delegations::default()),
            changed: Notify::new(),
        }
    }

    /// Whether `/delegate_delayed_leave` is honoured (see [`CallsDeps`]).
    pub fn delegates(&self) -> bool {
        self.delayed_events.is_some()
    }

    /// Where clients reach this token service (MSC4143's
    /// `livekit_service_url`).
    pub fn livekit_service_url(&self) -> &str {
        &self.config.livekit_service_url
    }

    /// `POST …/sfu/get`.
    pub async fn legacy_token(&self, req: &LegacySfuRequest) -> Result<SfuAnswer, Error> {
        let token = &req.openid_token;
        check_fields(
            &[
                ("room", &req.room),
                ("openid_token.access_token", &token.access_token),
                ("openid_token.matrix_server_name", &token.matrix_server_name),
            ],
            &req.delay_id,
            req.delay_timeout,
        )?;
        if req.device_id.len() > MAX_CALL_FIELD_BYTES {
            return Err(Error::BadJson(format!("`device_id` is longer than {MAX_CALL_FIELD_BYTES} bytes")));
        }
        let user_id = self.verify(token, None).await?;
        let room = token::livekit_room(&req.room, token::LEGACY_SLOT);
        Ok(self.answer(room, token::legacy_identity(&user_id, &req.device_id), &token.matrix_server_name))
    }

    /// `POST …/get_token`.
    pub async fn token(&self, req: &SfuRequest) -> Result<SfuAnswer, Error> {
        let (token, member) = (&req.openid_token, &req.member);
        check_fields(&required_fields(req), &req.delay_id, req.delay_timeout)?;
        let user_id = self.verify(token, Some(&member.claimed_user_id)).await?;
        let room = token::livekit_room(&req.room_id, &req.slot_id);
        let identity = token::livekit_identity(&user_id, &member.claimed_device_id, &member.id);
        Ok(self.answer(room, identity, &token.matrix_server_name))
    }

    /// `POST …/delegate_delayed_leave`: checked as lk-jwt-service checks
    /// it (400 `M_BAD_JSON` for missing fields, 401 `M_UNAUTHORIZED` for a
    /// token that does not verify, 403 `M_FORBIDDEN` for a user it does not
    /// delegate for), then remembered: the member's delayed leave is kept
    /// alive while its participant is on the built-in SFU and sent when it
    /// leaves. Answers `{}`.
    pub async fn delegate_delayed_leave(&self, req: &DelegateRequest) -> Result<(), Error> {
        let (token, member) = (&req.openid_token, &req.member);
        check_fields(&required_fields(req), "", 0)?;
        if req.delay_id.is_empty() || req.delay_timeout <= 0 {
            return Err(Error::BadJson("the request body is missing `delay_id` or `delay_timeout`".into()));
        }
        if req.delay_id.len() > MAX_CALL_FIELD_BYTES {
            return Err(Error::BadJson(format!("`delay_id` is longer than {MAX_CALL_FIELD_BYTES} bytes")));
        }
        let user_id = self.verify(token, Some(&member.claimed_user_id)).await?;
        if !self.delegates() || !may_create_rooms(&self.config.room_create_servers, &token.matrix_server_name) {
            return Err(Error::Forbidden("Delegation of delayed events is only supported for full access users".into()));
        }
        let key = (
            token::livekit_room(&req.room_id, &req.slot_id),
            token::livekit_identity(&user_id, &member.claimed_device_id, &member.id),
        );
        let delay_ms = req.delay_timeout as u64;
        let now = self.clock.now_ms();
        let delegated = self.lock().delegate(key, req.delay_id.clone(), delay_ms, user_id, now);
        match delegated {
            Ok(()) => {
                self.changed.notify_one();
                Ok(())
            }
            // By then a delegation whose participant never came is gone.
            Err(Refusal::TooManyForUser | Refusal::TooMany) => Err(Error::LimitExceeded { retry_after_ms: delay_ms }),
        }
    }

    /// The built-in SFU admitted a participant.
    pub fn participant_joined(&self, room: &str, identity: &str) {
        if self.delegates() {
            self.lock().joined((room.to_owned(), identity.to_owned()));
            self.changed.notify_one();
        }
    }

    /// A participant left the built-in SFU (not replaced by a new session
    /// of the same identity): its delegated leave, if any, is sent now.
    /// An event already gone (the client sent or cancelled it on hanging
    /// up) is no error; one that cannot be sent now stays scheduled and
    /// fires at its time.
    pub async fn participant_left(&self, room: &str, identity: &str) {
        let Some(delayed_events) = &self.delayed_events else { return };
        let Some(delay_id) = self.lock().left(&(room.to_owned(), identity.to_owned())) else { return };
        match delayed_events.update(&delay_id, Action::Send).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => tracing::warn!(error = %e, "sending a delegated delayed leave failed; it fires at its time"),
        }
    }

    /// Replaces what is known of who is on the SFU by its own list (after
    /// missed events), and sends the leaves of connected participants no
    /// longer on it.
    pub async fn resync_participants(&self, present: Vec<(String, String)>) {
        let Some(delayed_events) = &self.delayed_events else { return };
        let gone = self.lock().resync(present);
        for delay_id in gone {
            match delayed_events.update(&delay_id, Action::Send).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(error = %e, "sending a delegated delayed leave failed; it fires at its time"),
            }
        }
        self.changed.notify_one();
    }

    /// Restarts the delegated leaves that are due and forgets those whose
    /// participant never came; answers how long until the next look.
    pub async fn keep_delegations_alive(&self) -> Duration {
        let Some(delayed_events) = &self.delayed_events else {
            return Duration::from_millis(MAX_KEEP_ALIVE_SLEEP_MS);
        };
        let now = self.clock.now_ms();
        let (restart, mut next) = self.lock().due(now);
        for (key, delay_id) in restart {
            match delayed_events.update(&delay_id, Action::Restart).await {
                Ok(()) => {
                    if let Some(due) = self.lock().restarted(&key, &delay_id, self.clock.now_ms()) {
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
                // Sent, cancelled or fired: nothing left to keep alive.
                Err(Error::NotFound(_)) => self.lock().forget(&key, &delay_id),
                // Tried again at the next look; the event fires at its time
                // if the database stays away that long.
                Err(e) => tracing::warn!(error = %e, "restarting a delegated delayed leave failed"),
            }
        }
        let now = self.clock.now_ms();
        let wait = next.map_or(MAX_KEEP_ALIVE_SLEEP_MS, |at| at.saturating_sub(now)).min(MAX_KEEP_ALIVE_SLEEP_MS);
        Duration::from_millis(wait)
    }

    /// Resolves when a delegation or a participant arrived since the last
    /// call (the keep-alive task's wake-up).
    pub async fn delegations_changed(&self) {
        self.changed.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Delegations> {
        self.delegations.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The user behind an OpenID token, who must be `claimed_user_id`
    /// when one is given.
    async fn verify(&self, token: &OpenIdTokenBody, claimed_user_id: Option<&str>) -> Result<String, Error> {
        if token.matrix_server_name != self.openid.server_name().as_str() {
            // Another server's token: validating it needs federation.
            return Err(unauthorised());
        }
        let user_id = match self.openid.userinfo(&token.access_token).await {
            Ok(user_id) => user_id.to_string(),
            Err(Error::UnknownToken { .. }) => return Err(unauthorised()),
            Err(e) => return Err(e),
        };
        if claimed_user_id.is_some_and(|claimed| claimed != user_id) {
            return Err(unauthorised());
        }
        Ok(user_id)
    }

    fn answer(&self, room: String, identity: String, server_name: &str) -> SfuAnswer {
        let may_create = may_create_rooms(&self.config.room_create_servers, server_name);
        let now_secs = self.clock.now_ms() / 1000;
        let claims = token::JoinClaims::new(&self.config.livekit_api_key, room, identity, may_create, now_secs);
        let jwt = token::join_token(&claims, self.config.livekit_api_secret.as_bytes());
        SfuAnswer { url: self.config.livekit_url.clone(), jwt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_like_lk_jwt_service() {
        let long = "x".repeat(MAX_CALL_FIELD_BYTES + 1);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, i64, bool);
        let cases: &[Case] = &[
            ("all there", &[("room", "!r:x")], "", 0, true),
            ("one missing", &[("room", "!r:x"), ("slot_id", "")], "", 0, false),
            ("too long", &[("room", &long)], "", 0, false),
            ("delay id without timeout", &[("room", "!r:x")], "d", 0, false),
            ("timeout without delay id", &[("room", "!r:x")], "", 5, false),
            ("delegation asked for in a token request", &[("room", "!r:x")], "d", 5, false),
        ];
        for (what, required, delay_id, delay_timeout, ok) in cases {
            assert_eq!(check_fields(required, delay_id, *delay_timeout).is_ok(), *ok, "{what}");
        }
    }

    #[test]
    fn room_creation_follows_the_server_list() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cases = [
            (s(&["a.org"]), "a.org", true),
            (s(&["a.org"]), "b.org", false),
            (s(&["*"]), "b.org", true),
            (s(&["*", "a.org"]), "b.org", false),
            (s(&[]), "a.org", false),
        ];
        for (servers, server, want) in cases {
            assert_eq!(may_create_rooms(&servers, server), want, "{servers:?} {server}");
        }
    }
}
