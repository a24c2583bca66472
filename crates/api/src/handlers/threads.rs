//! Thread subscriptions (MSC4306) and their changes (MSC4308). Routed
//! only when the operator turned them on (`experimental.thread_subscriptions`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chancery_proto::limits::DEFAULT_THREAD_SUBSCRIPTIONS_PAGE;
use chancery_proto::ruma::api::client::threads::{get_thread_subscription, subscribe_thread, unsubscribe_thread};
use chancery_service::thread_subscriptions::page_limit;
use chancery_service::{Error, ThreadSubscriptions};
use serde::Deserialize;
use serde_json::Value as JsonValue;

use crate::error::ApiResult;
use crate::extract::{Authed, Ruma, RumaResponse};

pub async fn get(
    State(threads): State<Arc<ThreadSubscriptions>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_thread_subscription::unstable::Request>,
) -> ApiResult<RumaResponse<get_thread_subscription::unstable::Response>> {
    let automatic = threads.subscription(&user, &req.room_id, &req.thread_root).await?;
    Ok(RumaResponse(get_thread_subscription::unstable::Response::new(automatic)))
}

pub async fn subscribe(
    State(threads): State<Arc<ThreadSubscriptions>>,
    Authed(user): Authed,
    Ruma(req): Ruma<subscribe_thread::unstable::Request>,
) -> ApiResult<RumaResponse<subscribe_thread::unstable::Response>> {
    threads.subscribe(&user, &req.room_id, &req.thread_root, req.automatic.as_deref()).await?;
    Ok(RumaResponse(subscribe_thread::unstable::Response::new()))
}

pub async fn unsubscribe(
    State(threads): State<Arc<ThreadSubscriptions>>,
    Authed(user): Authed,
    Ruma(req): Ruma<unsubscribe_thread::unstable::Request>,
) -> ApiResult<RumaResponse<unsubscribe_thread::unstable::Response>> {
    threads.unsubscribe(&user, &req.room_id, &req.thread_root).await?;
    Ok(RumaResponse(unsubscribe_thread::unstable::Response::new()))
}

/// The query of `GET /unstable/io.element.msc4308/thread_subscriptions`.
/// Decoded here rather than with ruma's request type, whose `dir` cannot
/// be read: only `dir=b` is served (as Synapse), anything else is
/// `M_INVALID_PARAM`.
#[derive(Deserialize)]
pub struct ChangesQuery {
    dir: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u64>,
}

pub async fn changes(
    State(threads): State<Arc<ThreadSubscriptions>>,
    Authed(user): Authed,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> ApiResult<Json<JsonValue>> {
    let Query(query) = query.map_err(|e| Error::InvalidParam(format!("invalid query parameter: {}", e.body_text())))?;
    match query.dir.as_deref() {
        Some("b") => {}
        None => return Err(Error::MissingParam("dir is required (b)".into()).into()),
        Some(_) => return Err(Error::InvalidParam("only dir=b is supported".into()).into()),
    }
    let limit = page_limit(query.limit, DEFAULT_THREAD_SUBSCRIPTIONS_PAGE)?;
    Ok(Json(threads.page(&user, query.from.as_deref(), query.to.as_deref(), limit).await?))
}
