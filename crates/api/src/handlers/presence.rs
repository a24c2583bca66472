//! `GET/PUT /presence/{userId}/status`.

use axum::Json;
use axum::extract::State;
use chancery_proto::ruma::api::client::presence::{get_presence, set_presence};
use serde_json::{Value as JsonValue, json};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{Authed, Ruma};

pub async fn get(
    State(state): State<AppState>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_presence::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(state.services.get_presence(&user, &req.user_id).await?))
}

pub async fn set(
    State(state): State<AppState>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_presence::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    state.services.set_presence(&user, &req.user_id, req.presence.as_str(), req.status_msg).await?;
    Ok(Json(json!({})))
}
