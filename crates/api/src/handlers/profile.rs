//! Profiles: `/profile/{userId}` and `/profile/{userId}/{keyName}`.
//! Plain JSON handlers: a field's value may be any JSON (spec v1.16).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chancery_proto::ruma::{OwnedUserId, UserId};
use chancery_service::Profiles;
use serde_json::{Map, Value as JsonValue, json};

use crate::ApiConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, json_body};

fn parse_user(user_id: &str) -> ApiResult<OwnedUserId> {
    UserId::parse(user_id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid user id: {e}")))
}

pub async fn get_profile(State(profiles): State<Arc<Profiles>>, Path(user_id): Path<String>) -> ApiResult<Json<JsonValue>> {
    let profile = profiles.profile(&parse_user(&user_id)?).await?;
    Ok(Json(JsonValue::Object(profile.into_iter().collect())))
}

pub async fn get_field(
    State(profiles): State<Arc<Profiles>>,
    Path((user_id, key)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    let value = profiles.profile_field(&parse_user(&user_id)?, &key).await?;
    let mut body = Map::new();
    body.insert(key, value);
    Ok(Json(JsonValue::Object(body)))
}

pub async fn set_field(
    State(profiles): State<Arc<Profiles>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path((user_id, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let target = parse_user(&user_id)?;
    let JsonValue::Object(mut fields) = json_body(&config, &headers, body).await? else {
        return Err(ApiError::bad_json("the request body must be a JSON object"));
    };
    let value = fields
        .remove(&key)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", format!("the body has no {key} property")))?;
    profiles.set_profile_field(&user, &target, &key, value).await?;
    Ok(Json(json!({})))
}

pub async fn delete_field(
    State(profiles): State<Arc<Profiles>>,
    Authed(user): Authed,
    Path((user_id, key)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    profiles.delete_profile_field(&user, &parse_user(&user_id)?, &key).await?;
    Ok(Json(json!({})))
}
