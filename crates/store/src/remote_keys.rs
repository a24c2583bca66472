//! A cache of other servers' users' device and cross-signing keys, as
//! their servers answered a key query, so `/keys/query` need not ask them
//! each time (and still answers while they are down).
//!
//! An entry is valid while the user's device list has not moved since it
//! was fetched: it carries the user's position in the device-list stream
//! (`device_list_changes`) read before the query went out, and a change
//! their server announces (`KeyStore::note_remote_device_list_change`)
//! moves that position, so the entry stops matching without being
//! touched, even when the change lands while the query is in flight.

use async_trait::async_trait;

use crate::StoreResult;

/// The keys one server answered for one of its users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUserKeys {
    pub user_id: String,
    /// `{"device_keys": {...}, "master_key": ..., "self_signing_key": ...}`.
    pub keys_json: String,
    /// The user's device-list position read before the query went out.
    pub list_pos: u64,
}

#[async_trait]
pub trait RemoteKeyCacheStore: Send + Sync {
    /// Each user's position in the device-list stream (0: never moved).
    async fn remote_device_list_positions(&self, user_ids: &[String]) -> StoreResult<Vec<(String, u64)>>;

    /// The cached keys of those of `user_ids` whose entry is still valid
    /// and was fetched after `fresh_after_ts`: (user id, keys JSON).
    async fn cached_remote_keys(&self, user_ids: &[String], fresh_after_ts: u64) -> StoreResult<Vec<(String, String)>>;

    /// Caches `entries` (replacing older ones), fetched at `now_ts`; past
    /// `max_entries` in all, the least recently fetched go.
    async fn cache_remote_keys(&self, entries: &[RemoteUserKeys], now_ts: u64, max_entries: usize) -> StoreResult<()>;
}
