//! The room reader: single events, state, members, `/messages` pages,
//! `/context` and `/timestamp_to_event` (`context.rs`), relations and
//! threads (`relations.rs`). State is for joined members, members also
//! for former ones; events and members follow history visibility, so
//! former members read what they were allowed to see.

mod context;
mod relations;

use std::sync::Arc;

use chancery_proto::limits::MAX_MESSAGES_LIMIT;
use chancery_proto::ruma::api::client::filter::{LazyLoadOptions, RoomEventFilter};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::{RelationStore, RoomStore, StoredEvent};
use serde_json::{Map, Value as JsonValue, json};

pub use context::ContextPage;
pub use relations::{RelationsPage, RelationsRequest, ThreadsPage};

use super::filter::event_allowed;
use super::state::ensure_joined;
use super::visibility::Standing;
use super::{
    ClientEventOptions, Direction, EventFormatter, Visibility, format_history_token, format_token, parse_history_token,
    parse_token,
};
use crate::account_data::AccountData;
use crate::federation::RoomHistory;
use crate::{AuthedUser, Error};

#[derive(Debug, Clone)]
pub struct MessagesPage {
    pub chunk: Vec<JsonValue>,
    /// Member events of the chunk's senders, with lazy-loaded members.
    pub state: Vec<JsonValue>,
    pub start: String,
    pub end: Option<String>,
}

/// What [`RoomReader`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct RoomReaderDeps {
    pub rooms: Arc<dyn RoomStore>,
    pub relations: Arc<dyn RelationStore>,
    pub visibility: Arc<Visibility>,
    pub formatter: Arc<EventFormatter>,
    /// For the ignored-user list `/messages` applies.
    pub account_data: Arc<AccountData>,
    /// `/messages` pages on into a room's history from before this server
    /// joined it.
    pub history: Arc<RoomHistory>,
    /// Other servers in a room, asked for `/timestamp_to_event` when this
    /// server's copy may lack the history near the time.
    pub federation: Arc<crate::federation::RoomFederation>,
}

/// Reading rooms back.
pub struct RoomReader {
    deps: RoomReaderDeps,
}

impl RoomReader {
    pub fn new(deps: RoomReaderDeps) -> Self {
        Self { deps }
    }

    /// `GET /joined_rooms`.
    pub async fn joined_rooms(&self, user: &AuthedUser) -> Result<Vec<String>, Error> {
        let memberships = self.deps.rooms.memberships_of_user(user.user_id.as_str()).await?;
        Ok(memberships.into_iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id).collect())
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn room_event(&self, user: &AuthedUser, room_id: &RoomId, event_id: &EventId) -> Result<JsonValue, Error> {
        self.deps.visibility.ensure_can_read(room_id, &user.user_id).await?;
        let event = self.deps.rooms.event(event_id.as_str()).await?.filter(|e| e.room_id == room_id.as_str());
        let event = event.ok_or_else(|| Error::NotFound("no such event in this room".into()))?;
        let event = self.deps.visibility.visible_event(&user.user_id, event).await?;
        Ok(self.deps.formatter.client_events(&[event], &user.into()).await?.remove(0))
    }

    /// `GET /rooms/{roomId}/state`.
    pub async fn room_state(&self, user: &AuthedUser, room_id: &RoomId) -> Result<Vec<JsonValue>, Error> {
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let state = self.deps.rooms.state_at(room_id.as_str(), None).await?;
        self.deps.formatter.client_events(&state, &user.into()).await
    }

    /// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`: the content, or
    /// the whole event with `format=event`.
    pub async fn room_state_event(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        whole_event: bool,
    ) -> Result<JsonValue, Error> {
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let event = self.deps.rooms.state_event(room_id.as_str(), event_type, state_key, None).await?;
        let event = event.ok_or_else(|| Error::NotFound("no such state event".into()))?;
        let mut formatted = self.deps.formatter.client_events(&[event], &user.into()).await?.remove(0);
        Ok(if whole_event { formatted } else { formatted["content"].take() })
    }

    /// `GET /rooms/{roomId}/members`: for members the current members or
    /// those `at` a position; for former members (spec: 403 only for who
    /// "weren't previously a member") those when they left, or `at` a
    /// position. A position must be one whose state the user may see
    /// (`ReadAccess::may_see_state_at`), else 403: members from before a
    /// `joined` room let them in, or after they left, are not theirs to see.
    pub async fn room_members(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        at: Option<&str>,
        membership: Option<&MembershipState>,
        not_membership: Option<&MembershipState>,
    ) -> Result<Vec<JsonValue>, Error> {
        let standing = self.deps.visibility.standing(room_id, &user.user_id).await?;
        let standing = standing.ok_or_else(|| Error::Forbidden("you are not joined to this room".into()))?;
        let at = at.map(parse_token).transpose()?;
        let at = match standing {
            Standing::Member => at,
            Standing::FormerMember { left_at } => Some(at.unwrap_or(left_at)),
        };
        if let Some(pos) = at {
            self.deps.visibility.ensure_can_see_state_at(&user.user_id, room_id, pos).await?;
        }
        let state = self.deps.rooms.state_at(room_id.as_str(), at).await?;
        let members: Vec<_> = state
            .into_iter()
            .filter(|e| e.event_type == "m.room.member")
            .filter(|e| membership.is_none_or(|m| e.membership.as_ref() == Some(m)))
            .filter(|e| not_membership.is_none_or(|m| e.membership.as_ref() != Some(m)))
            .collect();
        self.deps.formatter.client_events(&members, &user.into()).await
    }

    /// `GET /rooms/{roomId}/joined_members`.
    pub async fn joined_members(&self, user: &AuthedUser, room_id: &RoomId) -> Result<JsonValue, Error> {
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let state = self.deps.rooms.state_at(room_id.as_str(), None).await?;
        let mut joined = Map::new();
        for e in state.iter().filter(|e| e.event_type == "m.room.member" && e.membership == Some(MembershipState::Join)) {
            let content: JsonValue =
                serde_json::from_str::<JsonValue>(&e.json).ok().and_then(|v| v.get("content").cloned()).unwrap_or_default();
            let mut member = Map::new();
            for (from, to) in [("displayname", "display_name"), ("avatar_url", "avatar_url")] {
                if let Some(v) = content.get(from).filter(|v| v.is_string()) {
                    member.insert(to.into(), v.clone());
                }
            }
            joined.insert(e.state_key.clone().unwrap_or_default(), JsonValue::Object(member));
        }
        Ok(json!({ "joined": joined }))
    }

    /// `GET /rooms/{roomId}/messages`.
    pub async fn messages(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        from: Option<&str>,
        dir: Direction,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<MessagesPage, Error> {
        // Former members page through what history visibility leaves them.
        self.deps.visibility.ensure_can_read(room_id, &user.user_id).await?;
        let limit = limit.clamp(1, MAX_MESSAGES_LIMIT);
        let current = self.deps.rooms.current_stream_pos().await?;
        let viewer = ClientEventOptions::from(user);
        // Within the room's history from before this server's join (a
        // history token), or in the stream, going on into that history when
        // a backward page reaches the stream's first event of the room.
        let history_from = from.and_then(parse_history_token);
        let (events, start, end) = match (dir, history_from) {
            (Direction::Backward, Some(after)) => {
                let page = self.deps.history.page(&user.user_id, room_id, after, limit).await?;
                let events = self.page_filter(user, room_id, filter, Vec::new(), page.events).await?;
                (events, format_history_token(after), page.next.map(format_history_token))
            }
            (Direction::Backward, None) => {
                let up_to = from.map(parse_token).transpose()?.unwrap_or(current).min(current);
                let events = self.deps.rooms.room_events(room_id.as_str(), 0, up_to, limit, true).await?;
                let (end, history) = if events.len() == limit {
                    (events.last().map(|e| format_token(e.stream_pos - 1)), Vec::new())
                } else {
                    // A room created here has no history: an empty page, no token.
                    let page = self.deps.history.page(&user.user_id, room_id, 0, limit - events.len()).await?;
                    (page.next.map(format_history_token), page.events)
                };
                (self.page_filter(user, room_id, filter, events, history).await?, format_token(up_to), end)
            }
            (Direction::Forward, _) => {
                // Forward from inside the history goes on from the
                // stream's first event of the room.
                let after = match history_from {
                    Some(_) => 0,
                    None => from.map(parse_token).transpose()?.unwrap_or(0),
                };
                let events = self.deps.rooms.room_events(room_id.as_str(), after, current, limit, false).await?;
                let end = (events.len() == limit).then(|| events.last().map(|e| format_token(e.stream_pos))).flatten();
                (self.page_filter(user, room_id, filter, events, Vec::new()).await?, format_token(after), end)
            }
        };
        let state = if matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { .. }) {
            // The member events of the page's senders, so the client can
            // show them without the full member list. On every page, also
            // with `include_redundant_members: false`, which lets the server
            // leave out those "already sent to the client in prior calls to
            // this endpoint" but does not oblige it to: a device pages
            // through several timelines of a room (the live one, a
            // permalink's, a thread's) and tokens are bare positions, so
            // the server cannot tell which timeline a page extends, nor
            // whether the client still holds an earlier page's state, and
            // a left-out member would show as a bare user id. Synapse sends
            // them on every page too. `/sync`, a single sequence per
            // device, does skip them (`crate::lazy_members`).
            let mut senders: Vec<&str> = events.iter().map(|e| e.sender.as_str()).collect();
            senders.sort_unstable();
            senders.dedup();
            let mut members = Vec::with_capacity(senders.len());
            for sender in senders {
                if let Some(m) = self.deps.rooms.state_event(room_id.as_str(), "m.room.member", sender, None).await? {
                    members.push(m);
                }
            }
            self.deps.formatter.client_events(&members, &viewer).await?
        } else {
            Vec::new()
        };
        Ok(MessagesPage { chunk: self.deps.formatter.client_events(&events, &viewer).await?, start, end, state })
    }

    /// A `/messages` page's events as the reader may see them: the
    /// stream's (`events`) after the filter and history visibility, then
    /// the room's history before the join (`history`, already judged by
    /// [`RoomHistory`]) after the filter; no timeline events of ignored
    /// users (spec "Ignoring Users", as in /sync; their state events stay).
    /// Filtering after the page is cut keeps tokens exact; a page may hold
    /// fewer events than `limit`, which the spec allows.
    async fn page_filter(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        filter: &RoomEventFilter,
        events: Vec<StoredEvent>,
        history: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>, Error> {
        let allowed = |e: &StoredEvent| event_allowed(filter, &e.event_type, &e.sender);
        let events: Vec<_> = events.into_iter().filter(allowed).collect();
        let mut events = self.deps.visibility.visible_events(&user.user_id, room_id.as_str(), events).await?;
        events.extend(history.into_iter().filter(allowed));
        let ignored = self.deps.account_data.ignored_users(user.user_id.as_str()).await?;
        Ok(events.into_iter().filter(|e| e.state_key.is_some() || !ignored.contains(&e.sender)).collect())
    }
}
