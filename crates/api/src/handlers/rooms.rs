//! Rooms: creation, membership, sending and reading events.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chancery_proto::ruma::api::client::membership::{
    ban_user, invite_user, join_room_by_id, join_room_by_id_or_alias, joined_rooms, kick_user, leave_room, unban_user,
};
use chancery_proto::ruma::api::client::message::get_message_events;
use chancery_proto::ruma::api::client::redact::redact_event;
use chancery_proto::ruma::api::client::room::{Visibility, create_room};
use chancery_proto::ruma::api::{Direction as RumaDirection, client::membership::get_member_events};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room::RoomType;
use chancery_proto::ruma::{EventId, OwnedRoomId, RoomId};
use chancery_service::Error;
use chancery_service::delayed_events::ScheduleRequest;
use chancery_service::rooms::{CreateRoom, Direction, MembershipAction, Preset};
use chancery_service::{DelayedEvents, Directory, RoomReader, Rooms};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::delayed_events::RequestedDelay;
use crate::ApiConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, Ruma, RumaResponse, json_body};

fn raw_json<T>(raw: &chancery_proto::ruma::serde::Raw<T>) -> ApiResult<JsonValue> {
    serde_json::from_str(raw.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))
}

pub async fn create(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<create_room::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    if !req.invite_3pid.is_empty() {
        return Err(Error::InvalidParam("invites by e-mail or phone number are not supported".into()).into());
    }
    let mut initial_state = Vec::with_capacity(req.initial_state.len());
    for raw in &req.initial_state {
        let event = raw_json(raw)?;
        let event_type = event["type"].as_str().ok_or_else(|| ApiError::bad_json("initial_state events need a type"))?.to_owned();
        let state_key = event.get("state_key").and_then(|k| k.as_str()).unwrap_or("").to_owned();
        let content = event.get("content").cloned().unwrap_or_else(|| json!({}));
        initial_state.push((event_type, state_key, content));
    }
    let creation_content = req.creation_content.as_ref().map(raw_json).transpose()?;
    if let Some(content) = &creation_content
        && content.get("type").and_then(|t| t.as_str()).map(RoomType::from).is_some_and(|t| t == RoomType::Space)
    {
        // Spaces are rooms too; nothing special is needed to create one.
    }
    let create = CreateRoom {
        preset: req.preset.as_ref().map(|p| match p.as_str() {
            "trusted_private_chat" => Preset::TrustedPrivateChat,
            "public_chat" => Preset::PublicChat,
            _ => Preset::PrivateChat,
        }),
        public: req.visibility == Visibility::Public,
        name: req.name,
        topic: req.topic,
        invite: req.invite,
        initial_state,
        power_level_content_override: req.power_level_content_override.as_ref().map(raw_json).transpose()?,
        room_version: req.room_version.map(|v| v.to_string()),
        creation_content,
        is_direct: req.is_direct,
        room_alias_name: req.room_alias_name,
    };
    let room_id = rooms.create_room(&user, create).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

pub async fn join_by_id(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<RumaResponse<join_room_by_id::v3::Response>> {
    rooms.join_room(&user, &req.room_id, &[], req.reason).await?;
    Ok(RumaResponse(join_room_by_id::v3::Response::new(req.room_id)))
}

pub async fn join_by_id_or_alias(
    State(rooms): State<Arc<Rooms>>,
    State(directory): State<Arc<Directory>>,
    Authed(user): Authed,
    Ruma(req): Ruma<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<RumaResponse<join_room_by_id_or_alias::v3::Response>> {
    let (room_id, mut servers) = match <&RoomId>::try_from(&*req.room_id_or_alias) {
        Ok(room_id) => (room_id.to_owned(), Vec::new()),
        Err(alias) => directory.resolve_alias_with_servers(alias).await?,
    };
    servers.extend(req.via);
    rooms.join_room(&user, &room_id, &servers, req.reason).await?;
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(room_id)))
}

pub async fn leave(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<leave_room::v3::Request>,
) -> ApiResult<RumaResponse<leave_room::v3::Response>> {
    rooms.leave_room(&user, &req.room_id, req.reason).await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

pub async fn invite(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<invite_user::v3::Request>,
) -> ApiResult<RumaResponse<invite_user::v3::Response>> {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.recipient else {
        return Err(Error::InvalidParam("invites by e-mail or phone number are not supported".into()).into());
    };
    let (target, reason) = (&recipient.user_id, recipient.reason.clone());
    rooms.change_membership(&user, &req.room_id, target, MembershipAction::Invite, reason).await?;
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

pub async fn kick(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<kick_user::v3::Request>,
) -> ApiResult<RumaResponse<kick_user::v3::Response>> {
    rooms.change_membership(&user, &req.room_id, &req.user_id, MembershipAction::Kick, req.reason).await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

pub async fn ban(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<ban_user::v3::Request>,
) -> ApiResult<RumaResponse<ban_user::v3::Response>> {
    rooms.change_membership(&user, &req.room_id, &req.user_id, MembershipAction::Ban, req.reason).await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

pub async fn unban(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<unban_user::v3::Request>,
) -> ApiResult<RumaResponse<unban_user::v3::Response>> {
    rooms.change_membership(&user, &req.room_id, &req.user_id, MembershipAction::Unban, req.reason).await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
}

pub async fn joined(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(_): Ruma<joined_rooms::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(json!({ "joined_rooms": reader.joined_rooms(&user).await? })))
}

fn parse_room(room_id: &str) -> ApiResult<OwnedRoomId> {
    RoomId::parse(room_id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid room id: {e}")))
}

fn parse_event(event_id: &str) -> ApiResult<chancery_proto::ruma::OwnedEventId> {
    EventId::parse(event_id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", format!("invalid event id: {e}")))
}

/// A JSON object body (event content).
async fn object_body(config: &ApiConfig, headers: &HeaderMap, body: Body) -> ApiResult<JsonValue> {
    let value = json_body(config, headers, body).await?;
    if !value.is_object() {
        return Err(ApiError::bad_json("event content must be a JSON object"));
    }
    Ok(value)
}

// Each argument is one axum extractor.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    State(rooms): State<Arc<Rooms>>,
    State(delayed): State<Arc<DelayedEvents>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    RequestedDelay(delay_ms): RequestedDelay,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let room_id = parse_room(&room_id)?;
    let content = object_body(&config, &headers, body).await?;
    if let Some(delay_ms) = delay_ms {
        let req = ScheduleRequest {
            room_id: &room_id,
            event_type: &event_type,
            state_key: None,
            txn_id: Some(txn_id.as_str()),
            content,
            delay_ms,
        };
        return Ok(Json(json!({ "delay_id": delayed.schedule(&user, req).await? })));
    }
    let event_id = rooms.send_message(&user, &room_id, &event_type, &txn_id, content).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

// Each argument is one axum extractor.
#[allow(clippy::too_many_arguments)]
pub async fn put_state(
    State(rooms): State<Arc<Rooms>>,
    State(delayed): State<Arc<DelayedEvents>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Path(params): Path<Vec<(String, String)>>,
    RequestedDelay(delay_ms): RequestedDelay,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let (room_id, event_type, state_key) = state_path(&params)?;
    let content = object_body(&config, &headers, body).await?;
    if let Some(delay_ms) = delay_ms {
        let req = ScheduleRequest {
            room_id: &room_id,
            event_type: &event_type,
            state_key: Some(state_key.as_str()),
            txn_id: None,
            content,
            delay_ms,
        };
        return Ok(Json(json!({ "delay_id": delayed.schedule(&user, req).await? })));
    }
    let event_id = rooms.send_state(&user, &room_id, &event_type, &state_key, content).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

#[derive(Deserialize)]
pub struct StateQuery {
    format: Option<String>,
}

pub async fn get_state_event(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Path(params): Path<Vec<(String, String)>>,
    Query(query): Query<StateQuery>,
) -> ApiResult<Json<JsonValue>> {
    let (room_id, event_type, state_key) = state_path(&params)?;
    let whole = query.format.as_deref() == Some("event");
    Ok(Json(reader.room_state_event(&user, &room_id, &event_type, &state_key, whole).await?))
}

/// `(room_id, event_type, state_key)` from a state path; the state key may
/// be missing (empty key, trailing slash optional).
fn state_path(params: &[(String, String)]) -> ApiResult<(OwnedRoomId, String, String)> {
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let room_id = parse_room(&get("room_id").unwrap_or_default())?;
    let event_type = get("event_type").unwrap_or_default();
    Ok((room_id, event_type, get("state_key").unwrap_or_default()))
}

pub async fn get_state(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(JsonValue::Array(reader.room_state(&user, &parse_room(&room_id)?).await?)))
}

pub async fn get_event(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Path((room_id, event_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(reader.room_event(&user, &parse_room(&room_id)?, &parse_event(&event_id)?).await?))
}

pub async fn members(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_member_events::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let membership = req.membership.as_ref().map(|m| MembershipState::from(m.as_str()));
    let not_membership = req.not_membership.as_ref().map(|m| MembershipState::from(m.as_str()));
    let chunk = reader.room_members(&user, &req.room_id, req.at.as_deref(), membership.as_ref(), not_membership.as_ref()).await?;
    Ok(Json(json!({ "chunk": chunk })))
}

pub async fn joined_members(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(reader.joined_members(&user, &parse_room(&room_id)?).await?))
}

pub async fn messages(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_message_events::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let dir = match req.dir {
        RumaDirection::Backward => Direction::Backward,
        RumaDirection::Forward => Direction::Forward,
    };
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(usize::MAX);
    let page = reader.messages(&user, &req.room_id, req.from.as_deref(), dir, limit, &req.filter).await?;
    let mut body = json!({ "chunk": page.chunk, "start": page.start, "state": page.state });
    if let Some(end) = page.end {
        body["end"] = json!(end);
    }
    Ok(Json(body))
}

pub async fn redact(
    State(rooms): State<Arc<Rooms>>,
    Authed(user): Authed,
    Ruma(req): Ruma<redact_event::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let event_id = rooms.redact(&user, &req.room_id, &req.event_id, req.txn_id.as_str(), req.reason).await?;
    Ok(Json(json!({ "event_id": event_id })))
}
