//! `GET/PUT /presence/{userId}/status`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chancery_proto::ruma::api::client::presence::{get_presence, set_presence};
use chancery_service::Ephemeral;
use serde_json::{Value as JsonValue, json};

use crate::error::ApiResult;
use crate::extract::{Authed, Ruma};

pub async fn get(
    State(ephemeral): State<Arc<Ephemeral>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_presence::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(ephemeral.get_presence(&user, &req.user_id).await?))
}

pub async fn set(
    State(ephemeral): State<Arc<Ephemeral>>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_presence::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    ephemeral.set_presence(&user, &req.user_id, &req.presence, req.status_msg).await?;
    Ok(Json(json!({})))
}
