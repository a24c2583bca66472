//! Receipts, read markers and typing notifications.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use chancery_proto::ruma::api::client::read_marker::set_read_marker;
use chancery_proto::ruma::api::client::receipt::create_receipt;
use chancery_proto::ruma::api::client::typing::create_typing_event::{self, v3::Typing};
use chancery_proto::ruma::events::receipt::ReceiptThread as RumaThread;
use chancery_service::{Ephemeral, ReceiptThread};

use crate::error::ApiResult;
use crate::extract::{Authed, Ruma, RumaResponse};
use crate::{AppState, ruma_route};

/// Routes of this module, on every path ruma knows for them.
pub(crate) fn routes(mut r: Router<AppState>) -> Router<AppState> {
    r = ruma_route::<create_receipt::v3::Request, _, _>(r, receipt);
    r = ruma_route::<set_read_marker::v3::Request, _, _>(r, read_markers);
    r = ruma_route::<create_typing_event::v3::Request, _, _>(r, typing);
    r
}

pub async fn receipt(
    State(ephemeral): State<Arc<Ephemeral>>,
    Authed(user): Authed,
    Ruma(req): Ruma<create_receipt::v3::Request>,
) -> ApiResult<RumaResponse<create_receipt::v3::Response>> {
    let thread = match &req.thread {
        RumaThread::Unthreaded => ReceiptThread::Unthreaded,
        RumaThread::Main => ReceiptThread::Main,
        // Anything else (a thread root, or a value that is neither) is the
        // service's to validate.
        other => ReceiptThread::Root(other.as_str().unwrap_or_default().to_owned()),
    };
    ephemeral.send_receipt(&user, &req.room_id, req.receipt_type.as_str(), &req.event_id, thread).await?;
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

pub async fn read_markers(
    State(ephemeral): State<Arc<Ephemeral>>,
    Authed(user): Authed,
    Ruma(req): Ruma<set_read_marker::v3::Request>,
) -> ApiResult<RumaResponse<set_read_marker::v3::Response>> {
    ephemeral
        .set_read_markers(
            &user,
            &req.room_id,
            req.fully_read.as_deref(),
            req.read_receipt.as_deref(),
            req.private_read_receipt.as_deref(),
        )
        .await?;
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
}

pub async fn typing(
    State(ephemeral): State<Arc<Ephemeral>>,
    Authed(user): Authed,
    Ruma(req): Ruma<create_typing_event::v3::Request>,
) -> ApiResult<RumaResponse<create_typing_event::v3::Response>> {
    let timeout_ms = match req.state {
        Typing::Yes(info) => Some(u64::try_from(info.timeout.as_millis()).unwrap_or(u64::MAX)),
        Typing::No => None,
    };
    ephemeral.set_typing(&user, &req.room_id, &req.user_id, timeout_ms).await?;
    Ok(RumaResponse(create_typing_event::v3::Response::new()))
}
