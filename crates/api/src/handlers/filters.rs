//! `POST /user/{userId}/filter`, `GET /user/{userId}/filter/{filterId}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chancery_proto::ruma::UserId;
use chancery_service::AccountData;
use serde_json::{Value as JsonValue, json};

use crate::ApiConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, json_body};

fn parse_user(user_id: &str) -> ApiResult<&UserId> {
    <&UserId>::try_from(user_id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid user id: {e}")))
}

pub async fn create(
    State(account_data): State<Arc<AccountData>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let filter = json_body(&config, &headers, body).await?;
    let id = account_data.create_filter(&user, parse_user(&user_id)?, filter).await?;
    Ok(Json(json!({ "filter_id": id })))
}

pub async fn get(
    State(account_data): State<Arc<AccountData>>,
    Authed(user): Authed,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(account_data.filter_json(&user, parse_user(&user_id)?, &filter_id).await?))
}
