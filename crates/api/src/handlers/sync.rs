//! `GET /sync` and simplified sliding sync (MSC4186).

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use chancery_proto::ruma::api::client::filter::FilterDefinition;
use chancery_proto::ruma::api::client::sync::sync_events::{v3, v5};
use chancery_service::{AccountData, SlidingSync, Syncer};
use chancery_service::{Error, SyncRequest};
use serde_json::Value as JsonValue;

use crate::ApiConfig;
use crate::error::ApiResult;
use crate::extract::{Authed, Ruma};

pub async fn sync(
    State(account_data): State<Arc<AccountData>>,
    State(syncer): State<Arc<Syncer>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    RawQuery(query): RawQuery,
    Ruma(req): Ruma<v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    // MSC4222's unstable name, which ruma's request does not know and
    // matrix-js-sdk sends.
    let state_after_unstable = query.as_deref().is_some_and(asks_unstable_state_after);
    let filter = match req.filter {
        None => FilterDefinition::default(),
        Some(v3::Filter::FilterDefinition(f)) => account_data.inline_filter(f)?,
        Some(v3::Filter::FilterId(id)) => account_data.filter(&user, &id).await?,
        Some(_) => return Err(Error::BadJson("unknown filter form".into()).into()),
    };
    let request = SyncRequest {
        since: req.since,
        timeout_ms: req.timeout.map_or(0, |t| u64::try_from(t.min(config.max_long_poll()).as_millis()).unwrap_or(u64::MAX)),
        full_state: req.full_state,
        use_state_after: req.use_state_after || state_after_unstable,
        // The stable name wins when a client sends both.
        state_after_unstable: state_after_unstable && !req.use_state_after,
        set_presence: req.set_presence,
        filter,
    };
    Ok(Json(syncer.sync(&user, request).await?))
}

/// Whether a query string holds `org.matrix.msc4222.use_state_after=true`.
fn asks_unstable_state_after(query: &str) -> bool {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(k, v)| k == "org.matrix.msc4222.use_state_after" && v == "true")
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
pub async fn sliding_sync(
    State(sliding): State<Arc<SlidingSync>>,
    State(config): State<Arc<ApiConfig>>,
    Authed(user): Authed,
    Ruma(mut req): Ruma<v5::Request>,
) -> ApiResult<Json<JsonValue>> {
    req.timeout = req.timeout.map(|t| t.min(config.max_long_poll()));
    Ok(Json(sliding.sync(&user, req).await?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unstable_state_after_flag_is_read_from_the_query() {
        let cases = [
            ("org.matrix.msc4222.use_state_after=true", true),
            ("since=s1&org.matrix.msc4222.use_state_after=true&timeout=0", true),
            ("org.matrix.msc4222.use_state_after=false", false),
            ("use_state_after=true", false),
            ("org.matrix.msc4222.use_state_after", false),
            ("", false),
        ];
        for (query, want) in cases {
            assert_eq!(super::asks_unstable_state_after(query), want, "{query}");
        }
    }
}
