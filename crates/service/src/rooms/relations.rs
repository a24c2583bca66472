//! Relations between events (client-server API "Forming relationships
//! between events"): which declared relations the server records, and the
//! `/relations` and `/threads` endpoints. Bundled aggregations are in
//! `client_event.rs`, where events are formatted.
//!
//! A relation is recorded only when it is valid, so every reader (pages,
//! aggregations, counts) can trust the table without re-checking rules:
//! - the parent is an event this server has, in the same room (spec:
//!   relations across rooms "are simply ignored");
//! - `m.replace`: the rules of "Validity of replacement events" (same
//!   sender and type, no state events, not an edit of an edit, with
//!   `m.new_content`); an invalid edit is stored as a plain event;
//! - `m.annotation`: has a `key` and does not annotate an edit or an
//!   annotation; a sender's second identical annotation is refused with
//!   `M_DUPLICATE_ANNOTATION` ("Avoiding duplicate annotations");
//! - `m.thread`: a thread cannot start at an event that itself has a
//!   relation, so threads do not nest; refused with 400 `M_UNKNOWN`, the
//!   code the spec's "Validation of m.thread relationships" prescribes.
//!
//! The checks run inside the room's write lock (see `send.rs`), so two
//! identical annotations sent at once through this node cannot both pass.
//! Through two nodes sharing PostgreSQL they still can; the spec tolerates
//! that (duplicates also arrive over federation), and annotation counts
//! count each sender once.

use chancery_core::pdu::EventDraft;
use chancery_proto::limits::{
    DEFAULT_RELATIONS_LIMIT, DEFAULT_THREADS_LIMIT, MAX_RELATIONS_LIMIT, MAX_THREADS_LIMIT, RELATIONS_RECURSION_DEPTH,
};
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::{NewRelation, RelationsQuery, StoredEvent};
use serde_json::Value as JsonValue;

use super::ClientEventOptions;
use super::read::{Direction, format_token, parse_token};
use crate::{AuthedUser, Error, Services};

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

/// `content["m.relates_to"]` with a `rel_type` and a well-formed `event_id`
/// (anything else is a rich reply, or no relation the server handles).
pub(super) struct Declared {
    parent: String,
    rel_type: String,
    key: Option<String>,
}

pub(super) fn declared(content: &JsonValue) -> Option<Declared> {
    let relates_to = content.get("m.relates_to")?;
    let rel_type = relates_to.get("rel_type")?.as_str()?.to_owned();
    let parent = relates_to.get("event_id")?.as_str()?;
    EventId::parse(parent).ok()?;
    let key = relates_to.get("key").and_then(JsonValue::as_str).map(str::to_owned);
    Some(Declared { parent: parent.to_owned(), rel_type, key })
}

/// The `rel_type` of a stored event's own relation, from its content as
/// clients see it (a redacted event has no content, so no relation).
fn rel_type_of(event: &StoredEvent) -> Option<String> {
    if event.redacted_by.is_some() {
        return None;
    }
    let json: JsonValue = serde_json::from_str(&event.json).ok()?;
    json.get("content")?.get("m.relates_to")?.get("rel_type")?.as_str().map(str::to_owned)
}

/// Spec "Validity of replacement events". The encrypted payload of an
/// `m.room.encrypted` edit holds `m.new_content`, so it cannot be checked.
fn is_valid_replacement(draft: &EventDraft, original: &StoredEvent) -> bool {
    draft.sender.as_str() == original.sender
        && draft.event_type == original.event_type
        && draft.state_key.is_none()
        && original.state_key.is_none()
        && rel_type_of(original).as_deref() != Some("m.replace")
        && (draft.event_type == "m.room.encrypted" || draft.content.get("m.new_content").is_some_and(JsonValue::is_object))
}

impl Services {
    /// The relation to record with `draft`, if it declares a valid one; an
    /// error if the spec asks to refuse the event. Called under the room's
    /// write lock.
    pub(crate) async fn relation_to_record(&self, room_id: &RoomId, draft: &EventDraft) -> Result<Option<NewRelation>, Error> {
        let Some(declared) = declared(&draft.content) else { return Ok(None) };
        let parent = self.store().event(&declared.parent).await?.filter(|p| p.room_id == room_id.as_str());
        let Some(parent) = parent else { return Ok(None) };
        let key = match declared.rel_type.as_str() {
            "m.thread" => {
                if rel_type_of(&parent).is_some() {
                    return Err(Error::Unknown(
                        "a thread cannot start at an event that relates to another one (threads do not nest)".into(),
                    ));
                }
                None
            }
            "m.replace" => {
                if !is_valid_replacement(draft, &parent) {
                    return Ok(None);
                }
                None
            }
            "m.annotation" => {
                let Some(key) = declared.key else { return Ok(None) };
                if matches!(rel_type_of(&parent).as_deref(), Some("m.annotation" | "m.replace")) {
                    return Ok(None);
                }
                let mine = self.store().annotation_counts(&declared.parent, Some(draft.sender.as_str())).await?;
                if mine.iter().any(|a| a.event_type == draft.event_type && a.key == key) {
                    return Err(Error::DuplicateAnnotation);
                }
                Some(key)
            }
            _ => None,
        };
        Ok(Some(NewRelation { parent: declared.parent, rel_type: declared.rel_type, key }))
    }

    /// An event of the room, or `M_NOT_FOUND`.
    pub(crate) async fn event_in_room(&self, room_id: &RoomId, event_id: &EventId) -> Result<StoredEvent, Error> {
        let event = self.store().event(event_id.as_str()).await?.filter(|e| e.room_id == room_id.as_str());
        event.ok_or_else(|| Error::NotFound("no such event in this room".into()))
    }

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
        self.ensure_can_read(room_id, &user.user_id).await?;
        let parent = self.event_in_room(room_id, event_id).await?;
        // A parent the user may not see is answered like a missing one.
        let parent = self
            .visible_events(&user.user_id, room_id.as_str(), vec![parent])
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound("no such event in this room".into()))?;
        let limit = req.limit.unwrap_or(DEFAULT_RELATIONS_LIMIT).clamp(1, MAX_RELATIONS_LIMIT);
        let from = req.from.as_deref().map(parse_token).transpose()?;
        let to = req.to.as_deref().map(parse_token).transpose()?;
        let current = self.store().current_stream_pos().await?;
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
        let events = if after < up_to { self.store().relations(&query).await? } else { Vec::new() };
        let next_batch = match events.last() {
            Some(last) if events.len() == limit => {
                Some(format_token(if newest_first { last.stream_pos - 1 } else { last.stream_pos }))
            }
            _ => None,
        };
        // Filtering after the page is cut keeps the token exact (it moves
        // past what was read, seen or not); a page may then hold fewer
        // children than `limit`, which the spec allows.
        let events = self.visible_events(&user.user_id, room_id.as_str(), events).await?;
        Ok(RelationsPage {
            chunk: self.client_events(&events, &ClientEventOptions::from(user)).await?,
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
        self.ensure_can_read(room_id, &user.user_id).await?;
        let limit = limit.unwrap_or(DEFAULT_THREADS_LIMIT).clamp(1, MAX_THREADS_LIMIT);
        let before = from.map(parse_token).transpose()?;
        let participant = participated_only.then_some(user.user_id.as_str());
        let roots = self.store().thread_roots(room_id.as_str(), participant, before, limit).await?;
        let next_batch = match roots.last() {
            Some(last) if roots.len() == limit => Some(format_token(last.latest_pos)),
            _ => None,
        };
        // Roots the user may not see are dropped after the page is cut, so
        // the token still moves past them.
        let roots: Vec<StoredEvent> = roots.into_iter().map(|t| t.root).collect();
        let roots = self.visible_events(&user.user_id, room_id.as_str(), roots).await?;
        Ok(ThreadsPage { chunk: self.client_events(&roots, &ClientEventOptions::from(user)).await?, next_batch })
    }
}
