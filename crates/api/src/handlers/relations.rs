//! Relations, threads, event context and timestamp lookup.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use chancery_proto::ruma::api::Direction as RumaDirection;
use chancery_proto::ruma::api::client::context::get_context;
use chancery_proto::ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type, get_relating_events_with_rel_type_and_event_type,
};
use chancery_proto::ruma::api::client::room::get_event_by_timestamp;
use chancery_proto::ruma::{EventId, RoomId, UInt};
use chancery_service::RoomReader;
use chancery_service::rooms::{Direction, RelationsRequest};
use chancery_service::{AuthedUser, Error};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::error::ApiResult;
use crate::extract::{Authed, Ruma};

fn direction(dir: RumaDirection) -> Direction {
    match dir {
        RumaDirection::Backward => Direction::Backward,
        RumaDirection::Forward => Direction::Forward,
    }
}

fn limit(limit: Option<UInt>) -> Option<usize> {
    limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
}

/// `/relations` in all three forms: the parent's children, optionally of
/// one relation type and event type.
macro_rules! relations_request {
    ($req:expr, $rel_type:expr, $event_type:expr) => {
        RelationsRequest {
            rel_type: $rel_type,
            event_type: $event_type,
            from: $req.from,
            to: $req.to,
            limit: limit($req.limit),
            dir: direction($req.dir),
            recurse: $req.recurse,
        }
    };
}

async fn relations_page(
    reader: &RoomReader,
    user: &AuthedUser,
    room_id: &RoomId,
    event_id: &EventId,
    req: RelationsRequest,
) -> ApiResult<Json<JsonValue>> {
    let page = reader.relations(user, room_id, event_id, req).await?;
    let mut body = json!({ "chunk": page.chunk });
    if let Some(next) = page.next_batch {
        body["next_batch"] = json!(next);
    }
    if let Some(prev) = page.prev_batch {
        body["prev_batch"] = json!(prev);
    }
    if let Some(depth) = page.recursion_depth {
        body["recursion_depth"] = json!(depth);
    }
    Ok(Json(body))
}

pub async fn relations(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_relating_events::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let (room_id, event_id) = (req.room_id.clone(), req.event_id.clone());
    relations_page(&reader, &user, &room_id, &event_id, relations_request!(req, None, None)).await
}

pub async fn relations_of_type(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let (room_id, event_id) = (req.room_id.clone(), req.event_id.clone());
    let rel_type = Some(req.rel_type.to_string());
    relations_page(&reader, &user, &room_id, &event_id, relations_request!(req, rel_type, None)).await
}

pub async fn relations_of_type_and_event_type(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let (room_id, event_id) = (req.room_id.clone(), req.event_id.clone());
    let (rel_type, event_type) = (Some(req.rel_type.to_string()), Some(req.event_type.to_string()));
    relations_page(&reader, &user, &room_id, &event_id, relations_request!(req, rel_type, event_type)).await
}

/// The query of `/threads`. Decoded here rather than with ruma's request
/// type, which requires `include` although the spec makes it optional
/// (default `all`).
#[derive(Deserialize)]
pub struct ThreadsQuery {
    include: Option<String>,
    from: Option<String>,
    limit: Option<UInt>,
}

pub async fn threads(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Path(room_id): Path<String>,
    query: Result<Query<ThreadsQuery>, QueryRejection>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = RoomId::parse(&room_id).map_err(|e| Error::InvalidParam(format!("invalid room id: {e}")))?;
    let Query(query) = query.map_err(|e| Error::InvalidParam(format!("invalid query parameter: {}", e.body_text())))?;
    let participated = match query.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(other) => return Err(Error::InvalidParam(format!("include must be all or participated, not {other}")).into()),
    };
    let page = reader.threads(&user, &room_id, participated, query.from.as_deref(), limit(query.limit)).await?;
    let mut body = json!({ "chunk": page.chunk });
    if let Some(next) = page.next_batch {
        body["next_batch"] = json!(next);
    }
    Ok(Json(body))
}

pub async fn context(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_context::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(usize::MAX);
    let page = reader.event_context(&user, &req.room_id, &req.event_id, limit, &req.filter).await?;
    Ok(Json(json!({
        "start": page.start,
        "end": page.end,
        "events_before": page.events_before,
        "event": page.event,
        "events_after": page.events_after,
        "state": page.state,
    })))
}

pub async fn timestamp_to_event(
    State(reader): State<Arc<RoomReader>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let ts_ms = u64::from(req.ts.get());
    let (event_id, origin_server_ts) = reader.timestamp_to_event(&user, &req.room_id, ts_ms, direction(req.dir)).await?;
    Ok(Json(json!({ "event_id": event_id, "origin_server_ts": origin_server_ts })))
}
