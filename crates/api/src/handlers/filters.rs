//! `POST /user/{userId}/filter`, `GET /user/{userId}/filter/{filterId}`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chancery_proto::ruma::UserId;
use serde_json::{Value as JsonValue, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, read_body};

fn parse_user(user_id: &str) -> ApiResult<&UserId> {
    <&UserId>::try_from(user_id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid user id: {e}")))
}

pub async fn create(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let bytes = read_body(body, &headers, state.config.max_request_body_bytes).await?;
    let filter: JsonValue =
        serde_json::from_slice(&bytes).map_err(|_| ApiError::not_json("the request body is not valid JSON"))?;
    let id = state.services.create_filter(&user, parse_user(&user_id)?, filter).await?;
    Ok(Json(json!({ "filter_id": id })))
}

pub async fn get(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(state.services.filter_json(&user, parse_user(&user_id)?, &filter_id).await?))
}
