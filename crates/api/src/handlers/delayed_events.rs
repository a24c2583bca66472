//! Delayed events (MSC4140) as clients call them today: the
//! `org.matrix.msc4140.delay` query parameter of `/send` and `/state`
//! (read here, used by `rooms.rs`), the listing, and the management
//! endpoints, which take no access token: the delay id is the secret, so
//! an external service (lk-jwt-service, the SFU) can act on it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use chancery_service::DelayedEvents;
use chancery_service::delayed_events::{Action, decide};
use serde_json::{Value as JsonValue, json};

use crate::ApiConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, json_body};

/// The query parameter that makes a send a delayed one.
pub const DELAY_PARAM: &str = "org.matrix.msc4140.delay";

/// The delay a `/send` or `/state` request asks for, if any
/// ([`DELAY_PARAM`]). Not a number of milliseconds: 400 `M_INVALID_PARAM`.
pub struct RequestedDelay(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for RequestedDelay {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let invalid = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m);
        let query: Result<Query<HashMap<String, String>>, QueryRejection> = Query::from_request_parts(parts, state).await;
        let Query(query) = query.map_err(|_| invalid("malformed query string"))?;
        match query.get(DELAY_PARAM) {
            None => Ok(Self(None)),
            Some(v) => {
                v.parse().map(|ms| Self(Some(ms))).map_err(|_| invalid("org.matrix.msc4140.delay is a number of milliseconds"))
            }
        }
    }
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events`: the
/// user's scheduled delayed events, soonest first, in the shape Synapse
/// answers and matrix-js-sdk reads (`running_since` is when it was
/// scheduled or last restarted; it is due `delay` ms after). Finalised
/// events are not kept, so there is no `status` to filter on and no
/// `next_batch`.
pub async fn list(State(delayed): State<Arc<DelayedEvents>>, Authed(user): Authed) -> ApiResult<Json<JsonValue>> {
    let events = delayed.list(&user).await?;
    let listed: Vec<JsonValue> = events
        .into_iter()
        .map(|e| {
            let mut item = json!({
                "delay_id": e.delay_id,
                "room_id": e.room_id,
                "type": e.event_type,
                "delay": e.delay_ms,
                "running_since": decide::running_since(e.send_ts, e.delay_ms),
                "content": e.content,
            });
            if let Some(key) = e.state_key {
                item["state_key"] = json!(key);
            }
            item
        })
        .collect();
    Ok(Json(json!({ "delayed_events": listed })))
}

/// `POST …/delayed_events/{delay_id}` with `{"action": "cancel" |
/// "restart" | "send"}` (what matrix-js-sdk sends).
pub async fn update_by_body(
    State(delayed): State<Arc<DelayedEvents>>,
    State(config): State<Arc<ApiConfig>>,
    Path(delay_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let body = json_body(&config, &headers, body).await?;
    let Some(action) = body.get("action") else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", "'action' is missing"));
    };
    let action = Action::parse(action.as_str().unwrap_or_default())?;
    delayed.update(&delay_id, action).await?;
    Ok(Json(json!({})))
}

/// `POST …/delayed_events/{delay_id}/{cancel|restart|send}` (MSC4140's
/// current form, and what lk-jwt-service calls). The body is not read.
pub async fn update_by_path(
    State(delayed): State<Arc<DelayedEvents>>,
    Path((delay_id, action)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    let action = Action::parse(&action).map_err(|_| ApiError::unrecognized(StatusCode::NOT_FOUND))?;
    delayed.update(&delay_id, action).await?;
    Ok(Json(json!({})))
}
