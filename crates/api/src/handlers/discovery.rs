//! Discovery: `/versions`, `.well-known`, `/capabilities`, `/health`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chancery_proto::ruma::api::client::discovery::get_supported_versions;
use chancery_service::rooms::SUPPORTED_ROOM_VERSIONS;
use chancery_service::{DelayedEvents, Health, Rooms, ThreadSubscriptions};
use serde_json::{Value as JsonValue, json};

use crate::error::ApiResult;
use crate::extract::{Authed, Ruma, RumaResponse};
use crate::{ApiConfig, AppState};

/// Spec versions whose account, login and device semantics we follow.
/// Clients use this to pick endpoints; later capabilities (rooms, sync)
/// add their own endpoints, which answer `M_UNRECOGNIZED` until built.
const SPEC_VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13",
    "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

/// Unstable features this server has, as `/versions` names them: only
/// what is routed.
const UNSTABLE_FEATURES: &[&str] = &[
    // Dehydrated devices (`/unstable/org.matrix.msc3814.v1/dehydrated_device`).
    "org.matrix.msc3814",
    // Simplified sliding sync (`/unstable/org.matrix.simplified_msc3575/sync`):
    // matrix-sdk's discovery, hence Element X, looks for it.
    "org.matrix.simplified_msc3575",
    // Room summaries (`/unstable/im.nheko.summary/...`, MSC3266; stable
    // as `/v1/room_summary` since v1.15).
    "im.nheko.summary",
    // `state_after` in `/sync` under its unstable names
    // (`org.matrix.msc4222.use_state_after`), as matrix-js-sdk asks for it.
    "org.matrix.msc4222",
];

/// Delayed events (`?org.matrix.msc4140.delay=`,
/// `/unstable/org.matrix.msc4140/delayed_events`): advertised only when
/// they are on, since matrix-js-sdk (Element Call) checks this first.
const DELAYED_EVENTS_FEATURE: &str = "org.matrix.msc4140";

/// Thread subscriptions (`/unstable/io.element.msc4306/...` and
/// `/unstable/io.element.msc4308/thread_subscriptions`), when the operator
/// turned them on: matrix-sdk looks for this flag alone (Synapse
/// advertises only it, for both MSCs).
const THREAD_SUBSCRIPTIONS_FEATURE: &str = "org.matrix.msc4306";

pub async fn versions(
    State(delayed): State<Arc<DelayedEvents>>,
    State(threads): State<Arc<ThreadSubscriptions>>,
    Ruma(_): Ruma<get_supported_versions::Request>,
) -> RumaResponse<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(SPEC_VERSIONS.iter().map(|v| (*v).to_owned()).collect());
    response.unstable_features = UNSTABLE_FEATURES.iter().map(|f| ((*f).to_owned(), true)).collect();
    if delayed.enabled() {
        response.unstable_features.insert(DELAYED_EVENTS_FEATURE.to_owned(), true);
    }
    if threads.enabled() {
        response.unstable_features.insert(THREAD_SUBSCRIPTIONS_FEATURE.to_owned(), true);
    }
    RumaResponse(response)
}

/// `/.well-known/matrix/client`: the homeserver, and when calls are
/// configured the token service as MSC4143's `rtc_foci`.
pub async fn well_known_client(State(state): State<AppState>) -> Json<JsonValue> {
    let mut body = json!({ "m.homeserver": { "base_url": state.config.public_baseurl } });
    if let Some(calls) = &state.components.calls {
        body["org.matrix.msc4143.rtc_foci"] = json!([crate::handlers::calls::livekit_transport(calls)]);
    }
    Json(body)
}

pub async fn well_known_server(State(config): State<Arc<ApiConfig>>) -> Json<JsonValue> {
    Json(json!({ "m.server": config.federation_address }))
}

/// `GET /capabilities`: only what this server really does.
pub async fn capabilities(State(rooms): State<Arc<Rooms>>, Authed(_): Authed) -> ApiResult<Json<JsonValue>> {
    let available: serde_json::Map<String, JsonValue> =
        SUPPORTED_ROOM_VERSIONS.iter().map(|v| (v.to_string(), json!("stable"))).collect();
    Ok(Json(json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
            "m.profile_fields": { "enabled": true },
            "m.room_versions": {
                "default": rooms.default_room_version(),
                "available": available,
            },
        }
    })))
}

/// For load balancers: 200 when the database answers.
pub async fn health(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.healthy().await { (StatusCode::OK, "OK") } else { (StatusCode::SERVICE_UNAVAILABLE, "database unavailable") }
}
