//! Request logs and metrics. A request is named by its matched route
//! (`/_matrix/client/v3/devices/{device_id}`), never by its URI: query
//! strings may carry access tokens, and unbounded label values would let
//! clients grow the metrics without limit.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Marks the answer to a request whose handler panicked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Panicked;

/// The answer to a request whose handler panicked: 500 `M_UNKNOWN`, the
/// connection kept, the panic counted by [`observe`].
pub(crate) fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let mut response =
        crate::ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error").into_response();
    response.extensions_mut().insert(Panicked);
    response
}

/// Answers 503 `M_UNKNOWN` (with `Retry-After`) for a request not answered
/// within the configured request timeout: slow bodies, stuck reads and any
/// handler that waits too long give their task back. A long-poll waits
/// less than this (see [`crate::ApiConfig::max_long_poll`]).
pub(crate) async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let upload = req.extensions().get::<MatchedPath>().is_some_and(|m| crate::is_upload_route(m.as_str()));
    let limit = if upload { state.config.upload_timeout } else { state.config.request_timeout };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis() as u64, "a request was not answered in time; answered 503");
            crate::ApiError::from(chancery_service::Error::Unavailable {
                message: format!("the request was not answered within {} s", limit.as_secs_f64()),
                retry_after_ms: 1_000,
            })
            .into_response()
        }
    }
}

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
    let panicked = response.extensions().get::<Panicked>().is_some();
    if let Some(metrics) = &state.metrics {
        metrics.record_request(method.as_str(), endpoint, status, elapsed);
        if panicked {
            metrics.record_panic(method.as_str(), endpoint);
        }
    }
    if panicked {
        // The panic's own message went to stderr through the panic hook;
        // this names the route it happened on.
        tracing::error!(%method, endpoint, "a request handler panicked; answered 500");
    }
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    match client {
        Some(client) => tracing::info!(%method, endpoint, status, latency_ms, client, "request"),
        None => tracing::info!(%method, endpoint, status, latency_ms, "request"),
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_and_marked() {
        let app: Router =
            Router::new().route("/boom", get(boom)).layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response));
        let response = app.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.extensions().get::<Panicked>().is_some(), "observe counts it");
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["errcode"], "M_UNKNOWN");
    }

    #[test]
    fn panics_are_counted_per_route() {
        let metrics = crate::Metrics::new();
        metrics.record_panic("GET", "/boom");
        let text = metrics.render(chancery_service::PoolStats::default(), 0);
        assert!(text.contains(r#"chancery_http_handler_panics_total{method="GET",endpoint="/boom"} 1"#), "{text}");
    }
}
