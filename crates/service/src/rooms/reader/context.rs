//! Finding one's way around a room's history: `/context` (the events
//! around one event and the state there, e.g. to open a permalink) and
//! `/timestamp_to_event` (the event closest to a time, for "jump to date").

use std::collections::BTreeSet;

use chancery_proto::limits::MAX_CONTEXT_LIMIT;
use chancery_proto::ruma::api::client::filter::{LazyLoadOptions, RoomEventFilter, UrlFilter};
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::StoredEvent;
use serde_json::Value as JsonValue;

use super::RoomReader;
use crate::rooms::state::{ensure_joined, event_in_room};
use crate::rooms::{ClientEventOptions, Direction, format_token};
use crate::{AuthedUser, Error};

#[derive(Debug, Clone)]
pub struct ContextPage {
    /// `/messages` token to page backwards from before `events_before`.
    pub start: String,
    /// `/messages` token to page forwards from after `events_after`.
    pub end: String,
    /// Newest first.
    pub events_before: Vec<JsonValue>,
    pub event: JsonValue,
    /// Oldest first.
    pub events_after: Vec<JsonValue>,
    /// The state at the last event returned.
    pub state: Vec<JsonValue>,
}

/// `*` in a filter pattern matches any sequence of characters (spec
/// "Filtering"); patterns in practice end with it (`m.room.*`), and a
/// pattern with several is matched piece by piece.
fn pattern_matches(pattern: &str, value: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else { return false };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else { return rest.is_empty() };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether `event` passes a `RoomEventFilter` (types, senders, rooms and
/// URL filters; the limit is the caller's).
pub(crate) fn event_allowed(filter: &RoomEventFilter, event: &StoredEvent) -> bool {
    let type_ok = filter.types.as_ref().is_none_or(|types| types.iter().any(|p| pattern_matches(p, &event.event_type)))
        && !filter.not_types.iter().any(|p| pattern_matches(p, &event.event_type));
    let sender_ok = filter.senders.as_ref().is_none_or(|senders| senders.iter().any(|s| s.as_str() == event.sender))
        && !filter.not_senders.iter().any(|s| s.as_str() == event.sender);
    let room_ok = filter.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == event.room_id))
        && !filter.not_rooms.iter().any(|r| r.as_str() == event.room_id);
    let url_ok = match &filter.url_filter {
        None => true,
        Some(wanted) => {
            let has_url = serde_json::from_str::<JsonValue>(&event.json)
                .ok()
                .is_some_and(|e| e.get("content").and_then(|c| c.get("url")).is_some_and(JsonValue::is_string));
            has_url == matches!(wanted, UrlFilter::EventsWithUrl)
        }
    };
    type_ok && sender_ok && room_ok && url_ok
}

impl RoomReader {
    /// `GET /rooms/{roomId}/context/{eventId}`. `limit` is shared by the
    /// events before and after (half each, the odd one after); the filter
    /// applies to them and to the state, after the limit (the spec lets the
    /// server choose), so the tokens continue exactly after what was read.
    pub async fn event_context(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<ContextPage, Error> {
        self.deps.visibility.ensure_can_read(room_id, &user.user_id).await?;
        let event = event_in_room(&*self.deps.rooms, room_id, event_id).await?;
        let event = self.deps.visibility.visible_event(&user.user_id, event).await?;
        let limit = limit.min(MAX_CONTEXT_LIMIT);
        let (before_limit, after_limit) = (limit / 2, limit - limit / 2);
        let current = self.deps.rooms.current_stream_pos().await?;
        let pos = event.stream_pos;
        let before = if before_limit > 0 {
            self.deps.rooms.room_events(room_id.as_str(), 0, pos - 1, before_limit, true).await?
        } else {
            Vec::new()
        };
        let after = if after_limit > 0 && pos < current {
            self.deps.rooms.room_events(room_id.as_str(), pos, current, after_limit, false).await?
        } else {
            Vec::new()
        };
        let start = before.last().map_or(pos, |e| e.stream_pos) - 1;
        let end = after.last().map_or(pos, |e| e.stream_pos);

        // One read of the spans judges the events on both sides and the state.
        let viewer_id = user.user_id.as_str();
        let access = self.deps.visibility.room_access(&user.user_id, room_id.as_str(), start, end).await?;
        let before: Vec<StoredEvent> = before.into_iter().filter(|e| access.may_see(viewer_id, e)).collect();
        let after: Vec<StoredEvent> = after.into_iter().filter(|e| access.may_see(viewer_id, e)).collect();
        // The state at the last event returned (spec), but never at one the
        // user may not see: the state at `end` would show who joined or left
        // (and names, topics) after what they may read. Of the events they
        // see, the last whose state they may see, down to this one.
        let state_event = after.iter().rev().chain([&event]).find(|e| access.may_see_state_at(viewer_id, e));
        let state_pos = state_event.map(|e| e.stream_pos);
        let before: Vec<StoredEvent> = before.into_iter().filter(|e| event_allowed(filter, e)).collect();
        let after: Vec<StoredEvent> = after.into_iter().filter(|e| event_allowed(filter, e)).collect();
        // With lazy-loaded members, the member events of the senders shown,
        // whatever `include_redundant_members` says: a context answer
        // starts a new timeline in the client (a permalink), which holds
        // nothing yet (see `messages`).
        let lazy = matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { .. });
        let senders: BTreeSet<&str> =
            before.iter().chain(&after).chain(std::iter::once(&event)).map(|e| e.sender.as_str()).collect();
        let state = match state_pos {
            Some(pos) => self.deps.rooms.state_at(room_id.as_str(), Some(pos)).await?,
            None => Vec::new(),
        };
        let state: Vec<StoredEvent> = state
            .into_iter()
            .filter(|e| event_allowed(filter, e))
            .filter(|e| !lazy || e.event_type != "m.room.member" || e.state_key.as_deref().is_some_and(|k| senders.contains(k)))
            .collect();

        let viewer = ClientEventOptions::from(user);
        let mut page = self.deps.formatter.client_events(&[event], &viewer).await?;
        Ok(ContextPage {
            start: format_token(start),
            end: format_token(end),
            events_before: self.deps.formatter.client_events(&before, &viewer).await?,
            event: page.remove(0),
            events_after: self.deps.formatter.client_events(&after, &viewer).await?,
            state: self.deps.formatter.client_events(&state, &viewer).await?,
        })
    }

    /// `GET /rooms/{roomId}/timestamp_to_event`: the id and timestamp of
    /// the room's first event at or after `ts_ms` (forward) or last one at
    /// or before it (backward), among those the user may see: events
    /// hidden from them are passed over as if they did not exist, so the
    /// answer does not reveal them. When this server has no answer, or its
    /// copy of the room may lack history (it joined a room another server
    /// created), the other servers in the room are asked too (bounded:
    /// `RoomFederation::remote_timestamp_to_event`) and the answer closer
    /// to `ts_ms` wins. A remote answer is the remote server's view: this
    /// server may not hold that event yet.
    pub async fn timestamp_to_event(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        ts_ms: u64,
        dir: Direction,
    ) -> Result<(String, u64), Error> {
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let forward = dir == Direction::Forward;
        let current = self.deps.rooms.current_stream_pos().await?;
        let seen = self.deps.visibility.room_access(&user.user_id, room_id.as_str(), 0, current).await?.seen_ranges();
        let found = self.deps.relations.event_near_ts_within(room_id.as_str(), ts_ms, forward, &seen).await?;
        let local = found.map(|e| (e.event_id, e.origin_server_ts));
        let remote = if local.is_none() || self.deps.federation.is_partly_local(room_id).await? {
            self.deps.federation.remote_timestamp_to_event(room_id, ts_ms, forward).await?
        } else {
            None
        };
        crate::federation::closer(ts_ms, forward, local, remote).ok_or_else(|| {
            let direction = if forward { "forward" } else { "backward" };
            Error::NotFound(format!("no event from {ts_ms} in the {direction} direction"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn filter_patterns() {
        for (pattern, value, expected) in [
            ("m.room.message", "m.room.message", true),
            ("m.room.message", "m.room.messages", false),
            ("m.room.*", "m.room.member", true),
            ("m.room.*", "m.room.", true),
            ("m.room.*", "m.reaction", false),
            ("*", "anything", true),
            ("*.message", "m.room.message", true),
            ("m.*.member", "m.room.member", true),
            ("m.*.member", "m.room.name", false),
            ("m.*a*e", "m.reaction.type", true),
        ] {
            assert_eq!(pattern_matches(pattern, value), expected, "{pattern} ~ {value}");
        }
    }
}
