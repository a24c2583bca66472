//! Request extractors: ruma request decoding with Matrix errors, access
//! token authentication, and the client address for rate limiting.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use chancery_proto::ruma::api::error::{DeserializationError, FromHttpRequestError};
use chancery_proto::ruma::api::{IncomingRequest, OutgoingResponse};
use chancery_service::AuthedUser;
use serde_json::Value as JsonValue;

use crate::error::{ApiError, ApiResult};
use crate::{ApiConfig, AppState};

/// A decoded ruma request. Bodies over the configured limit are refused
/// with `M_TOO_LARGE` before they are read whole; bodies that are not JSON
/// get `M_NOT_JSON`; JSON of the wrong shape gets `M_BAD_JSON`.
pub struct Ruma<T>(pub T);

impl<T: IncomingRequest + Send + 'static> FromRequest<AppState> for Ruma<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> ApiResult<Self> {
        let (mut parts, body) = req.into_parts();
        let path_args = path_args(&mut parts, state).await?;
        let bytes = read_body(body, &parts.headers, &state.config).await?;
        decode(parts, bytes, &path_args).map(Ruma)
    }
}

/// A ruma request another server signed (`X-Matrix`), with its origin:
/// the signature is checked against the origin's keys and the operator's
/// federation lists before the request is decoded. Bodies are bounded by
/// [`MAX_FEDERATION_REQUEST_BYTES`](chancery_proto::limits::MAX_FEDERATION_REQUEST_BYTES).
pub struct Signed<T> {
    pub origin: chancery_proto::ruma::OwnedServerName,
    pub request: T,
    /// The origin's place among its requests in flight, held until the
    /// handler is done.
    pub permit: chancery_service::federation::InboundPermit,
}

impl<T: IncomingRequest + Send + 'static> FromRequest<AppState> for Signed<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> ApiResult<Self> {
        let (mut parts, body) = req.into_parts();
        let path_args = path_args(&mut parts, state).await?;
        let limits =
            ApiConfig { max_request_body_bytes: chancery_proto::limits::MAX_FEDERATION_REQUEST_BYTES, ..(*state.config).clone() };
        let bytes = read_body(body, &parts.headers, &limits).await?;
        let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let origin = state.components.federation.authenticate(authorization, &parts.method, &parts.uri, &bytes).await?;
        // Transactions are not rate-limited: a sender has one in flight per
        // destination, each bounded in size, and a 429 would only slow
        // delivery; everything else is.
        let transaction = parts.uri.path().starts_with("/_matrix/federation/v1/send/");
        let permit = state.components.federation.admit(&origin, !transaction)?;
        // A server that talks to us is up: what waits for it goes now.
        state.components.federation_sender.peer_is_back(&origin);
        Ok(Signed { origin, request: decode(parts, bytes, &path_args)?, permit })
    }
}

async fn path_args(parts: &mut Parts, state: &AppState) -> ApiResult<Vec<String>> {
    Ok(RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "invalid path parameter"))?
        .iter()
        .map(|(_, v)| v.to_owned())
        .collect())
}

/// Decodes a request whose body was read: `M_NOT_JSON` for a body that is
/// not JSON, `M_BAD_JSON` for JSON of the wrong shape.
fn decode<T: IncomingRequest + 'static>(parts: Parts, mut bytes: Bytes, path_args: &[String]) -> ApiResult<T> {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // Some clients send no body to POST /logout and friends.
            bytes = Bytes::from_static(b"{}");
        } else if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(ApiError::not_json("the request body is not valid JSON"));
        }
    }
    refuse_what_ruma_panics_on::<T>(&bytes)?;
    let request = axum::http::Request::from_parts(parts, bytes);
    // Should another of ruma's request types index client JSON and
    // panic on a body of the wrong shape, that is bad input too, not a
    // server fault.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::try_from_http_request(request, path_args)))
        .map_err(|_| ApiError::bad_json("malformed request"))?;
    decoded.map_err(decode_error)
}

/// Refuses, before ruma sees them, the bodies its decoders are known to
/// panic on: a login without a string `type` (ruma's `LoginInfo` indexes
/// the key). A panic caught is still a panic: it reaches the log through
/// the panic hook, once per request a client chooses to send.
fn refuse_what_ruma_panics_on<T: 'static>(body: &[u8]) -> ApiResult<()> {
    use chancery_proto::ruma::api::client::session::login;
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<login::v3::Request>() {
        let login_type = serde_json::from_slice::<JsonValue>(body).ok().and_then(|v| v.get("type").map(JsonValue::is_string));
        if login_type != Some(true) {
            return Err(ApiError::bad_json("a login needs a string `type`"));
        }
    }
    Ok(())
}

fn decode_error(e: FromHttpRequestError) -> ApiError {
    match e {
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid identifier: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid query parameter: {e}"))
        }
        FromHttpRequestError::Deserialization(e) => ApiError::bad_json(format!("malformed request: {e}")),
        FromHttpRequestError::MethodMismatch { .. } => ApiError::unrecognized(StatusCode::METHOD_NOT_ALLOWED),
        _ => ApiError::bad_json("malformed request"),
    }
}

/// Reads a body up to the configured size, within the configured time
/// (408 `M_UNKNOWN` for a client that sends too slowly). A declared length
/// over the limit is refused before anything is read.
pub async fn read_body(body: Body, headers: &HeaderMap, config: &ApiConfig) -> ApiResult<Bytes> {
    let limit = config.max_request_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::too_large(format!("request bodies are limited to {limit} bytes"));
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(config.body_read_timeout, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        let secs = config.body_read_timeout.as_secs_f64();
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "M_UNKNOWN", format!("the request body did not arrive within {secs} s"))
    })?;
    read.map_err(|e| {
        if e.into_inner().is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            ApiError::bad_json("could not read the request body")
        }
    })
}

/// A body that must be JSON (`M_NOT_JSON` otherwise), read up to the
/// configured size; its shape is the caller's to check.
pub async fn json_body(config: &ApiConfig, headers: &HeaderMap, body: Body) -> ApiResult<JsonValue> {
    let bytes = read_body(body, headers, config).await?;
    serde_json::from_slice(&bytes).map_err(|_| ApiError::not_json("the request body is not valid JSON"))
}

/// A ruma response as an HTTP response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => response.map(|b| Body::from(b.freeze())).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "could not serialize a response");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error").into_response()
            }
        }
    }
}

/// The access token of a request: `Authorization: Bearer` or, deprecated
/// but still allowed by the spec, the `access_token` query parameter.
fn access_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    parts.uri.query().and_then(|q| {
        q.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == "access_token").map(|(_, v)| v.to_owned())
    })
}

/// The user behind the request's access token.
pub struct Authed(pub AuthedUser);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = access_token(parts).ok_or(chancery_service::Error::MissingToken)?;
        Ok(Authed(state.components.accounts.authenticate(&token).await?))
    }
}

/// The user behind the request's access token, if it carries one
/// (endpoints where authentication is optional). A token that is sent
/// but unknown or expired is refused as on any other endpoint.
pub struct MaybeAuthed(pub Option<AuthedUser>);

impl FromRequestParts<AppState> for MaybeAuthed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        match access_token(parts) {
            None => Ok(MaybeAuthed(None)),
            Some(token) => Ok(MaybeAuthed(Some(state.components.accounts.authenticate(&token).await?))),
        }
    }
}

/// A server admin behind the request's access token: others get 403
/// `M_FORBIDDEN` before anything else of the request is looked at.
pub struct Admin(pub AuthedUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let Authed(user) = Authed::from_request_parts(parts, state).await?;
        user.ensure_admin()?;
        Ok(Admin(user))
    }
}

/// The client's address, used only as a rate-limit key and (if the
/// operator turns it on) in logs; never stored.
pub struct ClientAddress(pub Option<String>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(&parts.headers, &parts.extensions, state.config.trust_forwarded_for)))
    }
}

pub(crate) fn client_address(
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    trust_forwarded_for: bool,
) -> Option<String> {
    if trust_forwarded_for
        && let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        && let Some(nearest) = forwarded.rsplit(',').next()
    {
        // The proxy appends the address it saw; anything to its left was
        // sent by the client and proves nothing.
        return Some(nearest.trim().to_owned());
    }
    extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string())
}

#[cfg(test)]
mod tests {
    use chancery_proto::ruma::api::client::session::{login, logout};

    use super::*;

    #[test]
    fn login_bodies_ruma_panics_on_are_refused_first() {
        let decode = |body: &'static [u8]| {
            let request = axum::http::Request::post("/_matrix/client/v3/login").body(body).unwrap();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                login::v3::Request::try_from_http_request(request, &[] as &[String])
            }))
            .is_err()
        };
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let ruma_panics = decode(b"{}");
        std::panic::set_hook(hook);
        assert!(ruma_panics, "ruma's login decoder no longer panics on {{}}: the guard may go");
        for body in [&b"{}"[..], br#"{"type": 7}"#, b"[]", b"\"m.login.password\""] {
            let refused = refuse_what_ruma_panics_on::<login::v3::Request>(body).unwrap_err();
            assert_eq!(refused.errcode, "M_BAD_JSON");
        }
        assert!(refuse_what_ruma_panics_on::<login::v3::Request>(br#"{"type": "m.login.password"}"#).is_ok());
        assert!(refuse_what_ruma_panics_on::<logout::v3::Request>(b"{}").is_ok(), "other requests are ruma's to judge");
    }
}
