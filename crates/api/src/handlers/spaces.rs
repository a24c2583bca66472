//! Space hierarchies and room previews (room summaries, MSC3266).

use std::sync::Arc;

use axum::extract::State;
use chancery_proto::ruma::api::client::room::get_summary;
use chancery_proto::ruma::api::client::space::get_hierarchy;
use chancery_service::Spaces;
use chancery_service::spaces::HierarchyRequest;

use crate::error::ApiResult;
use crate::extract::{Authed, MaybeAuthed, Ruma, RumaResponse};

pub async fn hierarchy(
    State(spaces): State<Arc<Spaces>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<RumaResponse<get_hierarchy::v1::Response>> {
    let request = HierarchyRequest {
        room_id: req.room_id,
        from: req.from,
        limit: req.limit.map(u64::from),
        max_depth: req.max_depth.map(u64::from),
        suggested_only: req.suggested_only,
    };
    let page = spaces.hierarchy(&user, request).await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.rooms = page.rooms;
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

/// Authentication is optional (spec): without it, only rooms anyone may
/// preview are summarised, and `membership` is left out.
pub async fn room_summary(
    State(spaces): State<Arc<Spaces>>,
    MaybeAuthed(user): MaybeAuthed,
    Ruma(req): Ruma<get_summary::v1::Request>,
) -> ApiResult<RumaResponse<get_summary::v1::Response>> {
    let preview = spaces.room_summary(user.as_ref(), &req.room_id_or_alias).await?;
    let mut response = get_summary::v1::Response::new(preview.summary);
    response.membership = preview.membership;
    Ok(RumaResponse(response))
}
