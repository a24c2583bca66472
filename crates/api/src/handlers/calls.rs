//! OpenID tokens, MSC4143's RTC transports and the MatrixRTC token
//! service (lk-jwt-service compatible) under [`crate::LIVEKIT_SERVICE_PATH`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use chancery_proto::ruma::api::client::account::request_openid_token;
use chancery_proto::ruma::authentication::TokenType;
use chancery_service::calls::{DelegateRequest, LegacySfuRequest, SfuAnswer, SfuRequest};
use chancery_service::{Calls, OpenId};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as JsonValue, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, Ruma, RumaResponse, read_body};
use crate::{ApiConfig, AppState};

/// The token service, which exists when calls are configured (its routes
/// are registered only then; were one reached without it, it would answer
/// like an unknown endpoint).
pub struct CallsEnabled(pub Arc<Calls>);

impl FromRequestParts<AppState> for CallsEnabled {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> ApiResult<Self> {
        state.components.calls.clone().map(CallsEnabled).ok_or_else(|| ApiError::unrecognized(StatusCode::NOT_FOUND))
    }
}

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`.
pub async fn request_token(
    State(openid): State<Arc<OpenId>>,
    Authed(user): Authed,
    Ruma(req): Ruma<request_openid_token::v3::Request>,
) -> ApiResult<RumaResponse<request_openid_token::v3::Response>> {
    let token = openid.request_token(&user, &req.user_id).await?;
    Ok(RumaResponse(request_openid_token::v3::Response::new(
        token.access_token,
        TokenType::Bearer,
        token.matrix_server_name,
        Duration::from_secs(token.expires_in_secs),
    )))
}

#[derive(Deserialize)]
pub struct UserinfoQuery {
    access_token: Option<String>,
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=…`: the token
/// is the credential (no X-Matrix signature), as the spec says.
pub async fn userinfo(
    State(openid): State<Arc<OpenId>>,
    query: Result<Query<UserinfoQuery>, QueryRejection>,
) -> ApiResult<Json<JsonValue>> {
    let token = query.ok().and_then(|Query(q)| q.access_token).ok_or(chancery_service::Error::MissingToken)?;
    let user_id = openid.userinfo(&token).await?;
    Ok(Json(json!({ "sub": user_id })))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`
/// (routed only when calls are configured).
pub async fn rtc_transports(CallsEnabled(calls): CallsEnabled, Authed(_): Authed) -> Json<JsonValue> {
    Json(json!({ "rtc_transports": [livekit_transport(&calls)] }))
}

/// The one transport this server offers: its own token service.
pub fn livekit_transport(calls: &Calls) -> JsonValue {
    json!({ "type": "livekit", "livekit_service_url": calls.livekit_service_url() })
}

/// A token service body: as lk-jwt-service, anything that does not
/// decode (not JSON, unknown fields, wrong types) is 400 `M_NOT_JSON`.
async fn service_body<T: DeserializeOwned>(config: &ApiConfig, headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let bytes = read_body(body, headers, config).await?;
    serde_json::from_slice(&bytes).map_err(|_| ApiError::not_json("Error reading request"))
}

/// `POST <livekit_service_url>/sfu/get` (legacy).
pub async fn sfu_get(
    CallsEnabled(calls): CallsEnabled,
    State(config): State<Arc<ApiConfig>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<SfuAnswer>> {
    let req: LegacySfuRequest = service_body(&config, &headers, body).await?;
    Ok(Json(calls.legacy_token(&req).await?))
}

/// `POST <livekit_service_url>/get_token`.
pub async fn get_token(
    CallsEnabled(calls): CallsEnabled,
    State(config): State<Arc<ApiConfig>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<SfuAnswer>> {
    let req: SfuRequest = service_body(&config, &headers, body).await?;
    Ok(Json(calls.token(&req).await?))
}

/// `POST <livekit_service_url>/delegate_delayed_leave`: answers `{}` once
/// the member's delayed leave is in this server's keeping.
pub async fn delegate_delayed_leave(
    CallsEnabled(calls): CallsEnabled,
    State(config): State<Arc<ApiConfig>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let req: DelegateRequest = service_body(&config, &headers, body).await?;
    calls.delegate_delayed_leave(&req).await?;
    Ok(Json(json!({})))
}
