//! `/sync` v2 (client-server API "Syncing"): initial and incremental
//! syncs over the event stream, gappy timelines, the state section or
//! `state_after` (MSC4222), invites and knocks as stripped state, rooms
//! left since the last sync (unless forgotten), and long-polling woken by
//! the write path.
//!
//! A `since` token is a stream position; every query of one answer is
//! bounded by the position read at its start, so an answer is a consistent
//! cut of the stream and the next sync continues exactly after it.

use std::collections::BTreeSet;
use std::time::Duration;

use chancery_proto::limits::{DEFAULT_SYNC_TIMELINE_LIMIT, MAX_SYNC_TIMELINE_LIMIT, MAX_SYNC_TIMEOUT_MS};
use chancery_proto::ruma::api::client::filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter};
use chancery_store::{Membership, StoredEvent};
use serde_json::{Map, Value as JsonValue, json};

use crate::rooms::ClientEventOptions;
use crate::rooms::read::{format_token, parse_token};
use crate::{AuthedUser, Error, Services};

/// What the client asked for.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub since: Option<String>,
    pub timeout_ms: u64,
    pub full_state: bool,
    pub use_state_after: bool,
    pub filter: FilterDefinition,
}

/// State event types shown in an invite or knock (spec: "stripped state"
/// should include these so the room can be displayed).
const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

fn type_allowed(filter: &RoomEventFilter, event_type: &str) -> bool {
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    };
    filter.types.as_ref().is_none_or(|types| types.iter().any(matches)) && !filter.not_types.iter().any(matches)
}

fn room_allowed(filter: &FilterDefinition, room_id: &str) -> bool {
    let room = &filter.room;
    room.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == room_id))
        && !room.not_rooms.iter().any(|r| r.as_str() == room_id)
}

struct RoomWindow {
    timeline: Vec<StoredEvent>,
    limited: bool,
    /// Position just before the first timeline event (or the window end).
    before_timeline: u64,
}

impl Services {
    /// `GET /sync`.
    pub async fn sync(&self, user: &AuthedUser, req: SyncRequest) -> Result<JsonValue, Error> {
        let since = req.since.as_deref().map(parse_token).transpose()?;
        let timeout = Duration::from_millis(req.timeout_ms.min(MAX_SYNC_TIMEOUT_MS));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wakeups = self.inner.rooms.stream.subscribe();
        loop {
            wakeups.mark_unchanged();
            let now = self.store().current_stream_pos().await?;
            self.inner.rooms.advance(now);
            let (body, has_news) = self.sync_once(user, &req, since, now).await?;
            // An initial sync, a full-state sync or one with news answers at
            // once; otherwise wait for the stream to move (or time out).
            if since.is_none() || req.full_state || has_news || tokio::time::Instant::now() >= deadline {
                return Ok(body);
            }
            if tokio::time::timeout_at(deadline, wakeups.changed()).await.is_err() {
                return Ok(body);
            }
        }
    }

    async fn sync_once(
        &self,
        user: &AuthedUser,
        req: &SyncRequest,
        since: Option<u64>,
        now: u64,
    ) -> Result<(JsonValue, bool), Error> {
        let viewer = ClientEventOptions::from(user);
        let limit = req
            .filter
            .room
            .timeline
            .limit
            .map(|l| u64::from(l) as usize)
            .unwrap_or(DEFAULT_SYNC_TIMELINE_LIMIT)
            .clamp(1, MAX_SYNC_TIMELINE_LIMIT);
        let memberships = self.store().memberships_of_user(user.user_id.as_str()).await?;
        let forgotten: BTreeSet<String> = if memberships.iter().any(|m| matches!(m.membership.as_str(), "leave" | "ban")) {
            self.store().forgotten_rooms(user.user_id.as_str()).await?.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        let mut join = Map::new();
        let mut invite = Map::new();
        let mut knock = Map::new();
        let mut leave = Map::new();
        for m in memberships.iter().filter(|m| m.stream_pos <= now && room_allowed(&req.filter, &m.room_id)) {
            let changed_since = since.is_none_or(|s| m.stream_pos > s);
            match m.membership.as_str() {
                "join" => {
                    if let Some(room) = self.sync_joined_room(user, req, since, now, limit, m, changed_since, &viewer).await? {
                        join.insert(m.room_id.clone(), room);
                    }
                }
                "invite" if changed_since => {
                    let events = self.stripped_state(m, &viewer).await?;
                    invite.insert(m.room_id.clone(), json!({ "invite_state": { "events": events } }));
                }
                "knock" if changed_since => {
                    let events = self.stripped_state(m, &viewer).await?;
                    knock.insert(m.room_id.clone(), json!({ "knock_state": { "events": events } }));
                }
                "leave" | "ban" if forgotten.contains(&m.room_id) => {}
                "leave" | "ban" if since.is_some() && changed_since || (since.is_none() && req.filter.room.include_leave) => {
                    leave.insert(m.room_id.clone(), self.sync_left_room(req, since, limit, m, &viewer).await?);
                }
                _ => {}
            }
        }
        let has_news = !(join.is_empty() && invite.is_empty() && knock.is_empty() && leave.is_empty());
        let body = json!({
            "next_batch": format_token(now),
            "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
        });
        Ok((body, has_news))
    }

    /// The timeline window of a room between `since` (exclusive) and `up_to`.
    async fn window(
        &self,
        room_id: &str,
        since: Option<u64>,
        up_to: u64,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<RoomWindow, Error> {
        let after = since.unwrap_or(0);
        let mut events = self.store().room_events(room_id, after, up_to, limit + 1, true).await?;
        let limited = events.len() > limit;
        events.truncate(limit);
        events.reverse();
        let before_timeline = events.first().map_or(up_to, |e| e.stream_pos - 1);
        let timeline = events.into_iter().filter(|e| type_allowed(filter, &e.event_type)).collect();
        Ok(RoomWindow { timeline, limited, before_timeline })
    }

    /// Applies the state filter and member lazy-loading: with lazy loading,
    /// only the members who sent timeline events (and the user) are sent.
    fn filter_state(req: &SyncRequest, user: &AuthedUser, state: Vec<StoredEvent>, timeline: &[StoredEvent]) -> Vec<StoredEvent> {
        let lazy = matches!(req.filter.room.state.lazy_load_options, LazyLoadOptions::Enabled { .. });
        let senders: BTreeSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
        state
            .into_iter()
            .filter(|e| type_allowed(&req.filter.room.state, &e.event_type))
            .filter(|e| {
                !lazy
                    || e.event_type != "m.room.member"
                    || e.state_key.as_deref().is_some_and(|k| k == user.user_id.as_str() || senders.contains(k))
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn sync_joined_room(
        &self,
        user: &AuthedUser,
        req: &SyncRequest,
        since: Option<u64>,
        now: u64,
        limit: usize,
        m: &Membership,
        newly_joined: bool,
        viewer: &ClientEventOptions,
    ) -> Result<Option<JsonValue>, Error> {
        let room_id = m.room_id.as_str();
        // A room joined since the last sync is sent whole, like in an
        // initial sync.
        let window_since = if newly_joined { None } else { since };
        let w = self.window(room_id, window_since, now, limit, &req.filter.room.timeline).await?;
        if !newly_joined && !req.full_state && w.timeline.is_empty() && !w.limited {
            return Ok(None);
        }
        let state = if req.use_state_after {
            // MSC4222: the state at the end of the timeline, as a delta when
            // the client already has the room.
            match (window_since, req.full_state) {
                (Some(s), false) => self.store().state_changes(room_id, s, now).await?,
                _ => self.store().state_at(room_id, Some(now)).await?,
            }
        } else {
            match (window_since, req.full_state) {
                (Some(s), false) if w.limited => self.store().state_changes(room_id, s, w.before_timeline).await?,
                (Some(_), false) => Vec::new(),
                _ => self.store().state_at(room_id, Some(w.before_timeline)).await?,
            }
        };
        let state = Self::filter_state(req, user, state, &w.timeline);
        let summary = self.room_summary(room_id, user).await?;
        let state_key = if req.use_state_after { "state_after" } else { "state" };
        let mut room = json!({
            "timeline": {
                "events": self.client_events(&w.timeline, viewer).await?,
                "limited": w.limited,
                "prev_batch": format_token(w.before_timeline),
            },
            "ephemeral": { "events": [] },
            "account_data": { "events": [] },
            "summary": summary,
        });
        room[state_key] = json!({ "events": self.client_events(&state, viewer).await? });
        Ok(Some(room))
    }

    /// The room as the user may see it before joining: a few state events,
    /// stripped, and their own membership event, as of that event.
    async fn stripped_state(&self, m: &Membership, viewer: &ClientEventOptions) -> Result<Vec<JsonValue>, Error> {
        let state = self.store().state_at(&m.room_id, Some(m.stream_pos)).await?;
        let mut stripped = Vec::new();
        for e in state.iter().filter(|e| INVITE_STATE_TYPES.contains(&e.event_type.as_str()) || e.event_id == m.event_id) {
            let formatted = self.client_events(std::slice::from_ref(e), viewer).await?.remove(0);
            stripped.push(json!({
                "type": formatted["type"],
                "state_key": formatted["state_key"],
                "sender": formatted["sender"],
                "content": formatted["content"],
            }));
        }
        Ok(stripped)
    }

    async fn sync_left_room(
        &self,
        req: &SyncRequest,
        since: Option<u64>,
        limit: usize,
        m: &Membership,
        viewer: &ClientEventOptions,
    ) -> Result<JsonValue, Error> {
        // What happened up to (and including) the user's departure.
        let w = self.window(&m.room_id, since, m.stream_pos, limit, &req.filter.room.timeline).await?;
        let state = match since {
            Some(s) if w.limited => self.store().state_changes(&m.room_id, s, w.before_timeline).await?,
            Some(_) => Vec::new(),
            None => self.store().state_at(&m.room_id, Some(w.before_timeline)).await?,
        };
        Ok(json!({
            "timeline": { "events": self.client_events(&w.timeline, viewer).await?, "limited": w.limited, "prev_batch": format_token(w.before_timeline) },
            "state": { "events": self.client_events(&state, viewer).await? },
            "account_data": { "events": [] },
        }))
    }

    /// `summary`: member counts and up to five heroes (spec "Calculating
    /// the display name for a room").
    async fn room_summary(&self, room_id: &str, user: &AuthedUser) -> Result<JsonValue, Error> {
        let members = self.store().members_of_room(room_id).await?;
        let joined = members.iter().filter(|m| m.membership == "join").count();
        let invited = members.iter().filter(|m| m.membership == "invite").count();
        let heroes: Vec<&str> = members
            .iter()
            .filter(|m| m.user_id != user.user_id.as_str() && (m.membership == "join" || m.membership == "invite"))
            .map(|m| m.user_id.as_str())
            .take(5)
            .collect();
        Ok(json!({ "m.heroes": heroes, "m.joined_member_count": joined, "m.invited_member_count": invited }))
    }
}
