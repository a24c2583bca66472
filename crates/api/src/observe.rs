//! Request logs and metrics. A request is named by its matched route
//! (`/_matrix/client/v3/devices/{device_id}`), never by its URI: query
//! strings may carry access tokens, and unbounded label values would let
//! clients grow the metrics without limit.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

pub(crate) async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let endpoint = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let client = if state.config.log_client_address {
        crate::extract::client_address(req.headers(), req.extensions(), state.config.trust_forwarded_for)
    } else {
        None
    };
    let response = next.run(req).await;
    finish(&state, &method, &endpoint, started, response, client)
}

fn finish(
    state: &AppState,
    method: &axum::http::Method,
    endpoint: &str,
    started: Instant,
    response: Response,
    client: Option<String>,
) -> Response {
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if let Some(metrics) = &state.metrics {
        metrics.record_request(method.as_str(), endpoint, status, elapsed);
    }
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    match client {
        Some(client) => tracing::info!(%method, endpoint, status, latency_ms, client, "request"),
        None => tracing::info!(%method, endpoint, status, latency_ms, "request"),
    }
    response
}
