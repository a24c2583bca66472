//! The `/relations` and `/threads` endpoints (client-server API "Forming
//! relationships between events"). Which relations are recorded is the
//! writer's (`writer/relations.rs`, which records only valid ones, so
//! reads trust the table); bundled aggregations are formatted with events
//! (`format.rs`).

use chancery_proto::limits::{
    DEFAULT_RELATIONS_LIMIT, DEFAULT_THREADS_LIMIT, MAX_RELATIONS_LIMIT, MAX_THREADS_LIMIT, RELATIONS_RECURSION_DEPTH,
};
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::{RelationsQuery, StoredEvent};
use serde_json::Value as JsonValue;

use super::RoomReader;
use crate::rooms::state::event_in_room;
use crate::rooms::{ClientEventOptions, Direction, format_token, parse_token};
use crate::{AuthedUser, Error};

/// What a client asked `/relations` for.
#[derive(Debug, Clone)]
pub struct RelationsRequest {
    pub rel_type: Option<String>,
    pub event_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<usize>,
    pub dir: Direction,
    pub recurse: bool,
}

#[derive(Debug, Clone)]
pub struct RelationsPage {
    pub chunk: Vec<JsonValue>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    /// Present when the client asked to recurse (spec: then mandatory).
    pub recursion_depth: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ThreadsPage {
    pub chunk: Vec<JsonValue>,
    pub next_batch: Option<String>,
}

impl RoomReader {
    /// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`.
    ///
    /// Tokens are stream positions, as for `/messages`, so a `/messages` or
    /// `/sync` token works too: `s<N>` lies between positions N and N+1.
    pub async fn relations(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_id: &EventId,
        req: RelationsRequest,
    ) -> Result<RelationsPage, Error> {
        // Former members and readers of world-readable rooms too, each
        // seeing what history visibility leaves them (as with /messages).
        self.deps.visibility.ensure_can_read(room_id, &user.user_id).await?;
        let parent = event_in_room(&*self.deps.rooms, room_id, event_id).await?;
        let parent = self.deps.visibility.visible_event(&user.user_id, parent).await?;
        let limit = req.limit.unwrap_or(DEFAULT_RELATIONS_LIMIT).clamp(1, MAX_RELATIONS_LIMIT);
        let from = req.from.as_deref().map(parse_token).transpose()?;
        let to = req.to.as_deref().map(parse_token).transpose()?;
        let current = self.deps.rooms.current_stream_pos().await?;
        let (after, up_to, newest_first) = match req.dir {
            Direction::Backward => (to.unwrap_or(0), from.unwrap_or(current).min(current), true),
            Direction::Forward => (from.unwrap_or(0), to.unwrap_or(current).min(current), false),
        };
        let max_depth = if req.recurse { RELATIONS_RECURSION_DEPTH } else { 1 };
        let query = RelationsQuery {
            room_id: room_id.to_string(),
            parent: parent.event_id,
            rel_type: req.rel_type,
            event_type: req.event_type,
            after,
            up_to,
            limit,
            newest_first,
            max_depth,
        };
        let events = if after < up_to { self.deps.relations.relations(&query).await? } else { Vec::new() };
        let next_batch = match events.last() {
            Some(last) if events.len() == limit => {
                Some(format_token(if newest_first { last.stream_pos - 1 } else { last.stream_pos }))
            }
            _ => None,
        };
        // Filtering after the page is cut keeps the token exact (it moves
        // past what was read, seen or not); a page may then hold fewer
        // children than `limit`, which the spec allows.
        let events = self.deps.visibility.visible_events(&user.user_id, room_id.as_str(), events).await?;
        Ok(RelationsPage {
            chunk: self.deps.formatter.client_events(&events, &ClientEventOptions::from(user)).await?,
            next_batch,
            prev_batch: req.from,
            recursion_depth: req.recurse.then_some(max_depth),
        })
    }

    /// `GET /rooms/{roomId}/threads`: thread roots, the most recently
    /// active first. The token is the position of the last root's latest
    /// reply; a thread that gets a reply while a client pages moves to the
    /// top, where the client's sync shows it.
    pub async fn threads(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        participated_only: bool,
        from: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ThreadsPage, Error> {
        self.deps.visibility.ensure_can_read(room_id, &user.user_id).await?;
        let limit = limit.unwrap_or(DEFAULT_THREADS_LIMIT).clamp(1, MAX_THREADS_LIMIT);
        let before = from.map(parse_token).transpose()?;
        let participant = participated_only.then_some(user.user_id.as_str());
        let roots = self.deps.relations.thread_roots(room_id.as_str(), participant, before, limit).await?;
        let next_batch = match roots.last() {
            Some(last) if roots.len() == limit => Some(format_token(last.latest_pos)),
            _ => None,
        };
        // Roots the user may not see are dropped after the page is cut, so
        // the token still moves past them.
        let roots: Vec<StoredEvent> = roots.into_iter().map(|t| t.root).collect();
        let roots = self.deps.visibility.visible_events(&user.user_id, room_id.as_str(), roots).await?;
        Ok(ThreadsPage { chunk: self.deps.formatter.client_events(&roots, &ClientEventOptions::from(user)).await?, next_batch })
    }
}
