//! Finding people and messages: the user directory and server-side
//! full-text search over unencrypted message bodies, room names and
//! topics (SQLite FTS5, PostgreSQL `tsvector`).

use async_trait::async_trait;

use crate::{StoreResult, StoredEvent};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserHit {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// Best match first, by the backend's text rank.
    Rank,
    /// Newest first.
    Recent,
}

/// Positions `from <= p < to` of one room (`to` `None`: no end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionRange {
    pub from: u64,
    pub to: Option<u64>,
}

impl PositionRange {
    /// The whole room.
    pub const ALL: PositionRange = PositionRange { from: 0, to: None };
}

/// Where to search in one room: the events whose positions fall in one of
/// `ranges` (the parts of its history the searcher may read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchScope {
    pub room_id: String,
    pub ranges: Vec<PositionRange>,
}

impl SearchScope {
    /// Whether the scope is the whole room (one range, no bounds).
    pub fn is_whole_room(&self) -> bool {
        self.ranges == [PositionRange::ALL]
    }
}

#[derive(Debug, Clone)]
pub struct SearchHit {
    pub event: StoredEvent,
    /// Higher is better; comparable within one answer only.
    pub rank: f64,
}

#[async_trait]
pub trait SearchStore: Send + Sync {
    /// Active local users whose id or display name contains `term`
    /// (case-insensitive), who share a joined room with `searcher` or are
    /// joined to a public room, or anyone if `all_users`. At most `limit`,
    /// ordered by user id; the searcher is not included.
    async fn search_users(&self, searcher: &str, term: &str, limit: usize, all_users: bool) -> StoreResult<Vec<UserHit>>;

    /// Indexed events within `scopes` whose text under one of `keys`
    /// (`content.body`, `content.name`, `content.topic`) matches every word
    /// of `words` (the last one as a prefix). Skips the first `offset`
    /// matches; returns at most `limit` and the total number of matches
    /// within the scopes. Redacted events are not found.
    async fn search_events(
        &self,
        scopes: &[SearchScope],
        words: &[String],
        keys: &[String],
        order: SearchOrder,
        offset: usize,
        limit: usize,
    ) -> StoreResult<(Vec<SearchHit>, u64)>;
}
