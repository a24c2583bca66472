//! Matrix error responses: `{"errcode": ..., "error": ...}` with the status
//! the spec gives each errcode.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chancery_service::Error;
use serde_json::{Map, Value as JsonValue, json};

/// An error answer of the API layer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
    pub extra: Map<String, JsonValue>,
    retry_after_ms: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self { status, errcode, message: message.into(), extra: Map::new(), retry_after_ms: None }
    }

    pub fn unrecognized(status: StatusCode) -> Self {
        Self::new(status, "M_UNRECOGNIZED", "Unrecognized request")
    }

    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, errcode) = match &e {
            Error::Forbidden(_) | Error::RegistrationDisabled | Error::ResourceLimit(_) => (S::FORBIDDEN, "M_FORBIDDEN"),
            Error::GuestAccessForbidden => (S::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"),
            Error::UserDeactivated => (S::FORBIDDEN, "M_USER_DEACTIVATED"),
            Error::InvalidUsername(_) => (S::BAD_REQUEST, "M_INVALID_USERNAME"),
            Error::UserInUse => (S::BAD_REQUEST, "M_USER_IN_USE"),
            Error::Exclusive => (S::BAD_REQUEST, "M_EXCLUSIVE"),
            Error::WeakPassword(_) => (S::BAD_REQUEST, "M_WEAK_PASSWORD"),
            Error::InvalidParam(_) => (S::BAD_REQUEST, "M_INVALID_PARAM"),
            Error::MissingParam(_) => (S::BAD_REQUEST, "M_MISSING_PARAM"),
            Error::BadJson(_) => (S::BAD_REQUEST, "M_BAD_JSON"),
            Error::NotFound(_) => (S::NOT_FOUND, "M_NOT_FOUND"),
            Error::ServerManaged(_) => (S::METHOD_NOT_ALLOWED, "M_BAD_JSON"),
            Error::Unknown(_) => (S::BAD_REQUEST, "M_UNKNOWN"),
            Error::MissingToken => (S::UNAUTHORIZED, "M_MISSING_TOKEN"),
            Error::Unauthorized(_) => (S::UNAUTHORIZED, "M_UNAUTHORIZED"),
            Error::UnknownToken { .. } => (S::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
            Error::LimitExceeded { .. } => (S::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
            Error::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            Error::ProfileTooLarge => (S::BAD_REQUEST, "M_PROFILE_TOO_LARGE"),
            Error::KeyTooLarge => (S::BAD_REQUEST, "M_KEY_TOO_LARGE"),
            Error::UnsupportedRoomVersion(_) => (S::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
            Error::IncompatibleRoomVersion { .. } => (S::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION"),
            Error::DuplicateAnnotation => (S::BAD_REQUEST, "M_DUPLICATE_ANNOTATION"),
            Error::BadAlias(_) => (S::BAD_REQUEST, "M_BAD_ALIAS"),
            Error::RoomInUse(_) => (S::BAD_REQUEST, "M_ROOM_IN_USE"),
            Error::AliasInUse(_) => (S::CONFLICT, "M_UNKNOWN"),
            Error::InvalidSignature(_) => (S::BAD_REQUEST, "M_INVALID_SIGNATURE"),
            Error::WrongRoomKeysVersion { .. } => (S::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
            Error::UnknownPos => (S::BAD_REQUEST, "M_UNKNOWN_POS"),
            Error::Uia(_) => (S::UNAUTHORIZED, "M_FORBIDDEN"),
            Error::CannotOverwriteMedia => (S::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA"),
            Error::NotYetUploaded => (S::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED"),
            Error::UpstreamFailed(_) => (S::BAD_GATEWAY, "M_UNKNOWN"),
            // MSC4306's codes, as Synapse and ruma spell them.
            Error::ConflictingUnsubscription => (S::CONFLICT, "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION"),
            Error::NotInThread(_) => (S::BAD_REQUEST, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD"),
            Error::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, "M_UNKNOWN"),
            // What matrix-js-sdk's MatrixRTC membership manager (Element
            // Call) recognises to shorten its delayed leave: `M_UNKNOWN`
            // with the MSC4140 code and maximum in prefixed fields (below).
            Error::MaxDelayExceeded { .. } => (S::BAD_REQUEST, "M_UNKNOWN"),
            Error::Internal(detail) => {
                // The detail names what failed (database, hashing) and never
                // holds request content; clients only see a generic message.
                tracing::error!(error = %detail, "internal error");
                return Self::new(S::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error");
            }
        };
        let mut err = Self::new(status, errcode, message);
        match e {
            Error::UnknownToken { soft_logout } => {
                err.extra.insert("soft_logout".into(), json!(soft_logout));
            }
            Error::LimitExceeded { retry_after_ms } => {
                err.extra.insert("retry_after_ms".into(), json!(retry_after_ms));
                err.retry_after_ms = Some(retry_after_ms);
            }
            // Only the header: `retry_after_ms` belongs to M_LIMIT_EXCEEDED.
            Error::Unavailable { retry_after_ms, .. } => err.retry_after_ms = Some(retry_after_ms),
            // Spec "Server-side key backups": the client learns which
            // version to use (absent when there is none).
            // MSC4140: the maximum allowed delay, in milliseconds, under the
            // prefixed names matrix-js-sdk reads, and `max_delay` as well
            // (clients that read the unprefixed form).
            Error::IncompatibleRoomVersion { room_version } => {
                err.extra.insert("room_version".into(), json!(room_version));
            }
            Error::MaxDelayExceeded { max_delay_ms } => {
                err.extra.insert("org.matrix.msc4140.errcode".into(), json!("M_MAX_DELAY_EXCEEDED"));
                err.extra.insert("org.matrix.msc4140.max_delay".into(), json!(max_delay_ms));
                err.extra.insert("max_delay".into(), json!(max_delay_ms));
            }
            Error::WrongRoomKeysVersion { current: Some(current) } => {
                err.extra.insert("current_version".into(), json!(current));
            }
            Error::Uia(challenge) => {
                // A 401 interactive-auth body; errcode/error only when a
                // stage failed (spec: "User-Interactive Authentication API").
                let mut body = json!({
                    "flows": challenge.flows.iter().map(|stages| json!({"stages": stages})).collect::<Vec<_>>(),
                    "params": challenge.params,
                    "session": challenge.session,
                    "completed": challenge.completed,
                });
                if let Some((code, msg)) = challenge.error {
                    body["errcode"] = json!(code);
                    body["error"] = json!(msg);
                }
                let JsonValue::Object(map) = body else { unreachable!("json! object literal") };
                err.extra = map;
                err.errcode = "";
            }
            _ => {}
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        if !self.errcode.is_empty() {
            body.insert("errcode".into(), json!(self.errcode));
            body.insert("error".into(), json!(self.message));
        }
        let mut response = (self.status, Json(JsonValue::Object(body))).into_response();
        if let Some(ms) = self.retry_after_ms {
            // Retry-After is in whole seconds (spec v1.10+ also sends it).
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
