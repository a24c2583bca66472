//! `POST /search` and `POST /user_directory/search`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use chancery_service::search::RoomEventsCriteria;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authed, read_body};

async fn json_body<T: serde::de::DeserializeOwned>(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let bytes = read_body(body, headers, state.config.max_request_body_bytes).await?;
    let value: JsonValue =
        serde_json::from_slice(&bytes).map_err(|_| ApiError::not_json("the request body is not valid JSON"))?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_json(format!("malformed request: {e}")))
}

#[derive(Deserialize)]
struct SearchBody {
    search_categories: Categories,
}

#[derive(Deserialize)]
struct Categories {
    room_events: Option<RoomEventsCriteria>,
}

#[derive(Deserialize)]
pub struct SearchQuery {
    next_batch: Option<String>,
}

pub async fn search(
    State(state): State<AppState>,
    Authed(user): Authed,
    Query(query): Query<SearchQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let request: SearchBody = json_body(&state, &headers, body).await?;
    match request.search_categories.room_events {
        Some(criteria) => Ok(Json(state.services.search_room_events(&user, criteria, query.next_batch.as_deref()).await?)),
        None => Ok(Json(json!({ "search_categories": {} }))),
    }
}

#[derive(Deserialize)]
struct DirectoryBody {
    search_term: String,
    limit: Option<usize>,
}

pub async fn user_directory(
    State(state): State<AppState>,
    Authed(user): Authed,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let request: DirectoryBody = json_body(&state, &headers, body).await?;
    Ok(Json(state.services.search_user_directory(&user, &request.search_term, request.limit.unwrap_or(10)).await?))
}
