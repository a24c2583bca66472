//! `GET /pushers` and `POST /pushers/set`.

use std::sync::Arc;

use axum::extract::State;
use chancery_proto::ruma::api::client::push::{get_pushers, set_pusher};
use chancery_service::Pushers;

use crate::error::ApiResult;
use crate::extract::{Authed, Ruma, RumaResponse};

pub async fn list(
    State(pushers): State<Arc<Pushers>>,
    Authed(user): Authed,
    Ruma(_): Ruma<get_pushers::v3::Request>,
) -> ApiResult<RumaResponse<get_pushers::v3::Response>> {
    Ok(RumaResponse(get_pushers::v3::Response::new(pushers.pushers(&user).await?)))
}

pub async fn set(
    State(pushers): State<Arc<Pushers>>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_pusher::v3::Request>,
) -> ApiResult<RumaResponse<set_pusher::v3::Response>> {
    pushers.set_pusher(&user, req.action).await?;
    Ok(RumaResponse(set_pusher::v3::Response::new()))
}
