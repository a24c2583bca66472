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
//! Not built: delegating the delayed leave event (`delay_id`,
//! `delay_timeout` in these bodies, and `POST …/delegate_delayed_leave`),
//! which needs delayed events (MSC4140) in this server. A body asking for
//! it is refused with 400 `M_BAD_JSON`, lk-jwt-service's answer to a user
//! it does not delegate for; Element Call then asks `/sfu/get` again
//! without it and keeps its own delayed leave.

pub mod token;

use std::sync::Arc;

use chancery_proto::limits::MAX_CALL_FIELD_BYTES;
use serde::Deserialize;

use crate::Error;
use crate::clock::Clock;
use crate::openid::OpenId;

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

/// The answer of both endpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SfuAnswer {
    pub url: String,
    pub jwt: String,
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
        return Err(Error::BadJson("delegation of delayed events is not supported by this server yet".into()));
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

/// The token service.
pub struct Calls {
    config: CallsConfig,
    openid: Arc<OpenId>,
    clock: Arc<dyn Clock>,
}

impl Calls {
    pub fn new(config: CallsConfig, openid: Arc<OpenId>, clock: Arc<dyn Clock>) -> Self {
        Self { config, openid, clock }
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
        check_fields(
            &[
                ("room_id", &req.room_id),
                ("slot_id", &req.slot_id),
                ("member.id", &member.id),
                ("member.claimed_user_id", &member.claimed_user_id),
                ("member.claimed_device_id", &member.claimed_device_id),
                ("openid_token.access_token", &token.access_token),
                ("openid_token.matrix_server_name", &token.matrix_server_name),
            ],
            &req.delay_id,
            req.delay_timeout,
        )?;
        let user_id = self.verify(token, Some(&member.claimed_user_id)).await?;
        let room = token::livekit_room(&req.room_id, &req.slot_id);
        let identity = token::livekit_identity(&user_id, &member.claimed_device_id, &member.id);
        Ok(self.answer(room, identity, &token.matrix_server_name))
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
        let cases: &[(&str, &[(&str, &str)], &str, i64, bool)] = &[
            ("all there", &[("room", "!r:x")], "", 0, true),
            ("one missing", &[("room", "!r:x"), ("slot_id", "")], "", 0, false),
            ("too long", &[("room", &long)], "", 0, false),
            ("delay id without timeout", &[("room", "!r:x")], "d", 0, false),
            ("timeout without delay id", &[("room", "!r:x")], "", 5, false),
            ("delegation asked for: not built", &[("room", "!r:x")], "d", 5, false),
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
