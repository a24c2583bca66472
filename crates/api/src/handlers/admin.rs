//! The Synapse-compatible admin API (`/_synapse/admin`): content reports.
//! Parameters are checked as Synapse checks them: integers that are not,
//! or are negative, and unknown directions are 400 `M_INVALID_PARAM`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chancery_service::Admin as AdminApi;
use chancery_service::admin::{EventReportsRequest, RoomReportsRequest};
use chancery_service::rooms::Direction;
use serde_json::{Value as JsonValue, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::Admin;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
}

fn params(query: Params) -> ApiResult<HashMap<String, String>> {
    query.map(|Query(q)| q).map_err(|_| invalid("malformed query string"))
}

/// A non-negative integer query parameter, if present.
fn integer(params: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    params
        .get(name)
        .map(|v| v.parse::<u64>().map_err(|_| invalid(format!("The {name} parameter must be a non-negative integer."))))
        .transpose()
}

fn report_id(path: Result<Path<String>, PathRejection>) -> ApiResult<u64> {
    let Path(id) = path.map_err(|_| invalid("invalid path parameter"))?;
    id.parse().map_err(|_| invalid("The report_id parameter must be a string representing a positive integer."))
}

pub async fn event_reports(
    State(admin_api): State<Arc<AdminApi>>,
    Admin(admin): Admin,
    query: Params,
) -> ApiResult<Json<JsonValue>> {
    let params = params(query)?;
    let dir = match params.get("dir").map(String::as_str) {
        None | Some("b") => Direction::Backward,
        Some("f") => Direction::Forward,
        Some(_) => return Err(invalid("The dir parameter must be one of [b, f].")),
    };
    let req = EventReportsRequest {
        from: integer(&params, "from")?.unwrap_or(0),
        limit: integer(&params, "limit")?,
        dir,
        user_id: params.get("user_id").cloned(),
        room_id: params.get("room_id").cloned(),
        event_sender_user_id: params.get("event_sender_user_id").cloned(),
    };
    Ok(Json(admin_api.admin_event_reports(&admin, req).await?))
}

pub async fn event_report(
    State(admin_api): State<Arc<AdminApi>>,
    Admin(admin): Admin,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(admin_api.admin_event_report(&admin, report_id(path)?).await?))
}

pub async fn delete_event_report(
    State(admin_api): State<Arc<AdminApi>>,
    Admin(admin): Admin,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    admin_api.admin_delete_event_report(&admin, report_id(path)?).await?;
    Ok(Json(json!({})))
}

pub async fn room_reports(
    State(admin_api): State<Arc<AdminApi>>,
    Admin(admin): Admin,
    query: Params,
) -> ApiResult<Json<JsonValue>> {
    let params = params(query)?;
    let req = RoomReportsRequest {
        from: integer(&params, "from")?,
        limit: integer(&params, "limit")?,
        user_id: params.get("user_id").cloned(),
        room_id: params.get("room_id").cloned(),
    };
    Ok(Json(admin_api.admin_room_reports(&admin, req).await?))
}

pub async fn room_report(
    State(admin_api): State<Arc<AdminApi>>,
    Admin(admin): Admin,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(admin_api.admin_room_report(&admin, report_id(path)?).await?))
}

pub async fn delete_room_report(
    State(admin_api): State<Arc<AdminApi>>,
    Admin(admin): Admin,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    admin_api.admin_delete_room_report(&admin, report_id(path)?).await?;
    Ok(Json(json!({})))
}
