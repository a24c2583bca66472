//! Account data (`/user/{userId}/account_data/{type}`, per room under
//! `/user/{userId}/rooms/{roomId}/...`) and room tags. Plain JSON handlers:
//! content is any JSON object the client chooses, kept as sent.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use chancery_proto::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use chancery_service::AccountData;
use serde_json::{Value as JsonValue, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, json_body};
use crate::{ApiConfig, AppState};

/// Routes of this module, under the v3 and r0 prefixes.
pub(crate) fn routes(mut r: Router<AppState>) -> Router<AppState> {
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
        let user = format!("{prefix}/user/{{user_id}}");
        r = r
            .route(&format!("{user}/account_data/{{event_type}}"), get(get_global).put(put_global))
            .route(&format!("{user}/rooms/{{room_id}}/account_data/{{event_type}}"), get(get_room).put(put_room))
            .route(&format!("{user}/rooms/{{room_id}}/tags"), get(get_tags))
            .route(&format!("{user}/rooms/{{room_id}}/tags/{{tag}}"), axum::routing::put(put_tag).delete(delete_tag));
    }
    r
}

fn parse_user(user_id: &str) -> ApiResult<OwnedUserId> {
    UserId::parse(user_id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid user id: {e}")))
}

fn parse_room(room_id: &str) -> ApiResult<OwnedRoomId> {
    RoomId::parse(room_id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid room id: {e}")))
}

pub async fn put_global(
    State(account_data): State<Arc<AccountData>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path((user_id, event_type)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let target = parse_user(&user_id)?;
    let content = json_body(&config, &headers, body).await?;
    account_data.set_account_data(&user, &target, None, &event_type, content).await?;
    Ok(Json(json!({})))
}

pub async fn get_global(
    State(account_data): State<Arc<AccountData>>,
    Authed(user): Authed,
    Path((user_id, event_type)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(account_data.account_data(&user, &parse_user(&user_id)?, None, &event_type).await?))
}

pub async fn put_room(
    State(account_data): State<Arc<AccountData>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path((user_id, room_id, event_type)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let (target, room_id) = (parse_user(&user_id)?, parse_room(&room_id)?);
    let content = json_body(&config, &headers, body).await?;
    account_data.set_account_data(&user, &target, Some(&room_id), &event_type, content).await?;
    Ok(Json(json!({})))
}

pub async fn get_room(
    State(account_data): State<Arc<AccountData>>,
    Authed(user): Authed,
    Path((user_id, room_id, event_type)): Path<(String, String, String)>,
) -> ApiResult<Json<JsonValue>> {
    let (target, room_id) = (parse_user(&user_id)?, parse_room(&room_id)?);
    Ok(Json(account_data.account_data(&user, &target, Some(&room_id), &event_type).await?))
}

pub async fn get_tags(
    State(account_data): State<Arc<AccountData>>,
    Authed(user): Authed,
    Path((user_id, room_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(account_data.room_tags(&user, &parse_user(&user_id)?, &parse_room(&room_id)?).await?))
}

pub async fn put_tag(
    State(account_data): State<Arc<AccountData>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let (target, room_id) = (parse_user(&user_id)?, parse_room(&room_id)?);
    let info = json_body(&config, &headers, body).await?;
    account_data.set_room_tag(&user, &target, &room_id, &tag, Some(info)).await?;
    Ok(Json(json!({})))
}

pub async fn delete_tag(
    State(account_data): State<Arc<AccountData>>,
    Authed(user): Authed,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> ApiResult<Json<JsonValue>> {
    let (target, room_id) = (parse_user(&user_id)?, parse_room(&room_id)?);
    account_data.set_room_tag(&user, &target, &room_id, &tag, None).await?;
    Ok(Json(json!({})))
}
