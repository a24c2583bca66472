//! Paused walks of a space hierarchy (`GET /rooms/{roomId}/hierarchy`).
//!
//! A hierarchy is walked depth first over several requests; between two
//! pages the walk's frontier (the rooms still to visit) and the rooms
//! already visited are kept here under the `next_batch` token handed to
//! the client, so any node sharing the database answers the next page,
//! and a room reached twice (two parents, a cycle) is listed once over
//! all pages. Walks expire (the caller passes the cut-off) and are
//! bounded per user.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StoreResult;

/// A room still to visit, and how far below the walk's root it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRoom {
    pub room_id: String,
    pub depth: u32,
    /// The servers the link to it names (`via`), for a room of another
    /// server that a later page asks them about (absent in walks saved
    /// before this field existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
}

/// A walk paused after one page, saved under `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyWalk {
    pub token: String,
    /// The user who walks: only they may continue it.
    pub user_id: String,
    /// The walk's root, and the request's parameters that may not change
    /// between pages.
    pub room_id: String,
    pub suggested_only: bool,
    pub max_depth: u32,
    /// The frontier, the next room to visit last.
    pub pending: Vec<PendingRoom>,
    /// Rooms visited so far (listed or not).
    pub visited: Vec<String>,
    pub created_ts: u64,
}

/// The frontier and visited rooms as one JSON column, written and read
/// alike by every backend.
#[derive(Serialize, Deserialize)]
struct WalkState {
    pending: Vec<PendingRoom>,
    visited: Vec<String>,
}

/// The JSON a backend stores for the walk's frontier and visited rooms.
pub fn walk_state_json(walk: &HierarchyWalk) -> StoreResult<String> {
    serde_json::to_string(&WalkState { pending: walk.pending.clone(), visited: walk.visited.clone() })
        .map_err(|e| crate::StoreError::Backend(format!("hierarchy walk: {e}")))
}

/// Reads back what [`walk_state_json`] wrote, into `walk`.
pub fn read_walk_state(walk: &mut HierarchyWalk, json: &str) -> StoreResult<()> {
    let state: WalkState =
        serde_json::from_str(json).map_err(|e| crate::StoreError::Backend(format!("stored hierarchy walk: {e}")))?;
    walk.pending = state.pending;
    walk.visited = state.visited;
    Ok(())
}

#[async_trait]
pub trait HierarchyStore: Send + Sync {
    /// Saves a paused walk. In the same transaction, deletes every walk
    /// created before `expire_before_ts` and, when the walk's user already
    /// has `max_per_user` walks, their oldest ones, so they keep at most
    /// that many. A token is saved once (the caller draws it at random).
    async fn save_hierarchy_walk(&self, walk: &HierarchyWalk, expire_before_ts: u64, max_per_user: usize) -> StoreResult<()>;

    /// The walk saved under `token`, unless it was created before
    /// `expire_before_ts` (or deleted). Reading it does not consume it: a
    /// client retrying a page gets the same answer.
    async fn hierarchy_walk(&self, token: &str, expire_before_ts: u64) -> StoreResult<Option<HierarchyWalk>>;
}
