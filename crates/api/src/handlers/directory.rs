//! Room addresses and the published directory, upgrades, knocking,
//! forgetting and content reports.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chancery_proto::ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use chancery_proto::ruma::api::client::directory::{
    get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
};
use chancery_proto::ruma::api::client::knock::knock_room;
use chancery_proto::ruma::api::client::membership::forget_room;
use chancery_proto::ruma::api::client::room::{Visibility, aliases, report_room, upgrade_room};
use chancery_proto::ruma::directory::RoomNetwork;
use chancery_proto::ruma::{EventId, OwnedRoomAliasId, RoomId};
use chancery_service::Error;
use chancery_service::directory::PublicRoomsRequest;
use chancery_service::rooms::UpgradeRoom;
use chancery_service::{Directory, Reports, Rooms};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::ApiConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, Ruma, RumaResponse, read_body};

pub async fn get_alias(
    State(directory): State<Arc<Directory>>,
    Ruma(req): Ruma<get_alias::v3::Request>,
) -> ApiResult<RumaResponse<get_alias::v3::Response>> {
    let (room_id, servers) = directory.resolve_alias_with_servers(&req.room_alias).await?;
    Ok(RumaResponse(get_alias::v3::Response::new(room_id, servers)))
}

pub async fn create_alias(
    State(directory): State<Arc<Directory>>,
    Authed(user): Authed,
    Ruma(req): Ruma<create_alias::v3::Request>,
) -> ApiResult<RumaResponse<create_alias::v3::Response>> {
    directory.create_alias(&user, &req.room_alias, &req.room_id).await?;
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

pub async fn delete_alias(
    State(directory): State<Arc<Directory>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_alias::v3::Request>,
) -> ApiResult<RumaResponse<delete_alias::v3::Response>> {
    directory.delete_alias(&user, &req.room_alias).await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

pub async fn room_aliases(
    State(directory): State<Arc<Directory>>,
    Authed(user): Authed,
    Ruma(req): Ruma<aliases::v3::Request>,
) -> ApiResult<RumaResponse<aliases::v3::Response>> {
    let aliases = directory.room_aliases(&user, &req.room_id).await?;
    let aliases = aliases
        .into_iter()
        .map(OwnedRoomAliasId::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Internal(format!("stored alias: {e}")))?;
    Ok(RumaResponse(aliases::v3::Response::new(aliases)))
}

pub async fn get_visibility(
    State(directory): State<Arc<Directory>>,
    Ruma(req): Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<RumaResponse<get_room_visibility::v3::Response>> {
    let published = directory.room_published(&req.room_id).await?;
    let visibility = if published { Visibility::Public } else { Visibility::Private };
    Ok(RumaResponse(get_room_visibility::v3::Response::new(visibility)))
}

pub async fn set_visibility(
    State(directory): State<Arc<Directory>>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<RumaResponse<set_room_visibility::v3::Response>> {
    let published = match req.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(Error::InvalidParam("visibility is public or private".into()).into()),
    };
    directory.set_room_published(&user, &req.room_id, published).await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}

/// `GET /publicRooms`. The spec lets anyone read it; like Synapse's default
/// (`allow_public_rooms_without_auth: false`), only this server's users
/// may, as an institution's room list is not for the whole internet.
pub async fn public_rooms(
    State(directory): State<Arc<Directory>>,
    Authed(_): Authed,
    Ruma(req): Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let request = PublicRoomsRequest {
        server: req.server.map(|s| s.to_string()),
        limit: req.limit.map(u64::from),
        since: req.since,
        ..Default::default()
    };
    Ok(Json(directory.public_rooms(request).await?))
}

pub async fn public_rooms_filtered(
    State(directory): State<Arc<Directory>>,
    Authed(_): Authed,
    Ruma(req): Ruma<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let request = PublicRoomsRequest {
        server: req.server.map(|s| s.to_string()),
        limit: req.limit.map(u64::from),
        since: req.since,
        search: req.filter.generic_search_term,
        room_types: req.filter.room_types.iter().map(|t| t.as_str().map(str::to_owned)).collect(),
        third_party_network: matches!(req.room_network, RoomNetwork::ThirdParty(_)),
    };
    Ok(Json(directory.public_rooms(request).await?))
}

pub async fn upgrade(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<upgrade_room::v3::Request>,
) -> ApiResult<RumaResponse<upgrade_room::v3::Response>> {
    let upgrade = UpgradeRoom { new_version: req.new_version.to_string(), additional_creators: req.additional_creators };
    let replacement = rooms.upgrade_room(&user, &req.room_id, upgrade).await?;
    Ok(RumaResponse(upgrade_room::v3::Response::new(replacement)))
}

pub async fn knock(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<knock_room::v3::Request>,
) -> ApiResult<RumaResponse<knock_room::v3::Response>> {
    let room_id = rooms.knock(&user, &req.room_id_or_alias, &req.via, req.reason).await?;
    Ok(RumaResponse(knock_room::v3::Response::new(room_id)))
}

pub async fn forget(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<forget_room::v3::Request>,
) -> ApiResult<RumaResponse<forget_room::v3::Response>> {
    rooms.forget_room(&user, &req.room_id).await?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

/// The body of an event report. ruma's request type follows v1.18, which
/// dropped `score`; clients of earlier versions still send it, and it is
/// kept for the admins.
#[derive(Deserialize)]
struct EventReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

pub async fn report_event(
    State(reports): State<Arc<Reports>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path((room_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let invalid =
        |what: &str, e: String| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid {what}: {e}"));
    let room_id = RoomId::parse(&room_id).map_err(|e| invalid("room id", e.to_string()))?;
    let event_id = EventId::parse(&event_id).map_err(|e| invalid("event id", e.to_string()))?;
    let bytes = read_body(body, &headers, &config).await?;
    let value: JsonValue = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|_| ApiError::not_json("the request body is not valid JSON"))?
    };
    let body: EventReportBody = serde_json::from_value(value).map_err(|e| ApiError::bad_json(e.to_string()))?;
    reports.report_event(&user, &room_id, &event_id, body.reason, body.score).await?;
    Ok(Json(json!({})))
}

pub async fn report_room(
    State(reports): State<Arc<Reports>>,
    Authed(user): Authed,
    Ruma(req): Ruma<report_room::v3::Request>,
) -> ApiResult<RumaResponse<report_room::v3::Response>> {
    reports.report_room(&user, &req.room_id, req.reason).await?;
    Ok(RumaResponse(report_room::v3::Response::new()))
}
