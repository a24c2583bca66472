//! `POST /search` and `POST /user_directory/search`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use chancery_service::Search;
use chancery_service::search::RoomEventsCriteria;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::ApiConfig;
use crate::error::{ApiError, ApiResult};
use crate::extract::{self, Authed};

async fn json_body<T: serde::de::DeserializeOwned>(config: &ApiConfig, headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let value = extract::json_body(config, headers, body).await?;
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
    State(search): State<Arc<Search>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Query(query): Query<SearchQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let request: SearchBody = json_body(&config, &headers, body).await?;
    match request.search_categories.room_events {
        Some(criteria) => Ok(Json(search.search_room_events(&user, criteria, query.next_batch.as_deref()).await?)),
        None => Ok(Json(json!({ "search_categories": {} }))),
    }
}

#[derive(Deserialize)]
struct DirectoryBody {
    search_term: String,
    limit: Option<usize>,
}

pub async fn user_directory(
    State(search): State<Arc<Search>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let request: DirectoryBody = json_body(&config, &headers, body).await?;
    Ok(Json(search.search_user_directory(&user, &request.search_term, request.limit.unwrap_or(10)).await?))
}
