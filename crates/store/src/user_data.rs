//! Per-user data that is not an event: sync filters.

use async_trait::async_trait;

use crate::StoreResult;

#[async_trait]
pub trait UserDataStore: Send + Sync {
    /// Stores a filter (its JSON) and returns its id, unique per user; an
    /// identical filter the user stored before keeps its id (clients upload
    /// the same filter at every start).
    /// `TooManyFilters` if the user already has `max_filters`.
    async fn create_filter(&self, user_id: &str, filter_json: &str, max_filters: usize) -> StoreResult<String>;

    async fn filter(&self, user_id: &str, filter_id: &str) -> StoreResult<Option<String>>;
}
