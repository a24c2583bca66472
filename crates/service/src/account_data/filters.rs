//! Sync filters (`/user/{userId}/filter`).

use chancery_proto::limits::{MAX_FILTER_BYTES, MAX_FILTERS_PER_USER};
use chancery_proto::ruma::UserId;
use chancery_proto::ruma::api::client::filter::FilterDefinition;
use serde_json::Value as JsonValue;

use super::AccountData;
use crate::nul::refuse_nul_in_json;
use crate::{AuthedUser, Error};

impl AccountData {
    /// Stores a filter for the caller; returns its id.
    pub async fn create_filter(&self, user: &AuthedUser, target: &UserId, filter: JsonValue) -> Result<String, Error> {
        if user.user_id != target {
            return Err(Error::Forbidden("you can only create filters for yourself".into()));
        }
        let text = filter.to_string();
        if text.len() > MAX_FILTER_BYTES {
            return Err(Error::TooLarge(format!("filters are at most {MAX_FILTER_BYTES} bytes")));
        }
        refuse_nul_in_json(&filter, "filters")?;
        serde_json::from_str::<FilterDefinition>(&text).map_err(|e| Error::BadJson(format!("invalid filter: {e}")))?;
        Ok(self.deps.filters.create_filter(user.user_id.as_str(), &text, MAX_FILTERS_PER_USER).await?)
    }

    /// A stored filter, as JSON.
    pub async fn filter_json(&self, user: &AuthedUser, target: &UserId, filter_id: &str) -> Result<JsonValue, Error> {
        if user.user_id != target {
            return Err(Error::Forbidden("you can only read your own filters".into()));
        }
        self.stored_filter(user, filter_id).await
    }

    /// A filter given inline in `/sync?filter=`, bounded like a stored one
    /// (it is read on every pass of the sync).
    pub fn inline_filter(&self, filter: FilterDefinition) -> Result<FilterDefinition, Error> {
        let size = serde_json::to_string(&filter).map_err(|e| Error::Internal(e.to_string()))?.len();
        if size > MAX_FILTER_BYTES {
            return Err(Error::TooLarge(format!("filters are at most {MAX_FILTER_BYTES} bytes")));
        }
        Ok(filter)
    }

    /// A stored filter of the caller, parsed, for `/sync?filter=<id>`.
    pub async fn filter(&self, user: &AuthedUser, filter_id: &str) -> Result<FilterDefinition, Error> {
        self.stored_filter(user, filter_id).await
    }

    async fn stored_filter<T: serde::de::DeserializeOwned>(&self, user: &AuthedUser, filter_id: &str) -> Result<T, Error> {
        let text = self
            .deps
            .filters
            .filter(user.user_id.as_str(), filter_id)
            .await?
            .ok_or_else(|| Error::NotFound("no such filter".into()))?;
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("stored filter: {e}")))
    }
}
