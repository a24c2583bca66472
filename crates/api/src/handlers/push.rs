//! Push rules and `/notifications`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chancery_proto::ruma::api::client::push::{
    PushRule, delete_pushrule, get_notifications, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
    get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
};
use chancery_service::Push;
use serde_json::Value as JsonValue;

use crate::error::ApiResult;
use crate::extract::{Authed, Ruma, RumaResponse};

pub async fn all(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(_): Ruma<get_pushrules_all::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrules_all::v3::Response>> {
    Ok(RumaResponse(get_pushrules_all::v3::Response::new(push.push_ruleset(&user.user_id).await?)))
}

pub async fn global(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(_): Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrules_global_scope::v3::Response>> {
    Ok(RumaResponse(get_pushrules_global_scope::v3::Response::new(push.push_ruleset(&user.user_id).await?)))
}

pub async fn get(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_pushrule::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrule::v3::Response>> {
    let rule = push.push_rule(&user, req.kind, &req.rule_id).await?;
    Ok(RumaResponse(get_pushrule::v3::Response::new(PushRule::from(rule))))
}

pub async fn set(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_pushrule::v3::Request>,
) -> ApiResult<RumaResponse<set_pushrule::v3::Response>> {
    push.set_push_rule(&user, req.rule, req.before.as_deref(), req.after.as_deref()).await?;
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

pub async fn delete(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_pushrule::v3::Request>,
) -> ApiResult<RumaResponse<delete_pushrule::v3::Response>> {
    push.delete_push_rule(&user, req.kind, &req.rule_id).await?;
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

pub async fn enabled(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrule_enabled::v3::Response>> {
    let rule = push.push_rule(&user, req.kind, &req.rule_id).await?;
    Ok(RumaResponse(get_pushrule_enabled::v3::Response::new(rule.enabled())))
}

pub async fn set_enabled(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<RumaResponse<set_pushrule_enabled::v3::Response>> {
    push.set_push_rule_enabled(&user, req.kind, &req.rule_id, req.enabled).await?;
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

pub async fn actions(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrule_actions::v3::Response>> {
    let rule = push.push_rule(&user, req.kind, &req.rule_id).await?;
    Ok(RumaResponse(get_pushrule_actions::v3::Response::new(rule.actions().to_vec())))
}

pub async fn set_actions(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<RumaResponse<set_pushrule_actions::v3::Response>> {
    push.set_push_rule_actions(&user, req.kind, &req.rule_id, req.actions).await?;
    Ok(RumaResponse(set_pushrule_actions::v3::Response::new()))
}

pub async fn notifications(
    State(push): State<Arc<Push>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_notifications::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let limit = req.limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)).unwrap_or(20);
    let only_highlight = req.only.as_deref() == Some("highlight");
    Ok(Json(push.list_notifications(&user, req.from.as_deref(), limit, only_highlight).await?))
}
