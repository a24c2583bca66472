//! One room's part of a sync answer: a joined room's timeline, state,
//! ephemeral events, summary and unread counts; a left room's last
//! stretch; an invite's or knock's stripped state.

use std::collections::BTreeSet;

use chancery_proto::ruma::UserId;
use chancery_proto::ruma::api::client::filter::RoomEventFilter;
use chancery_store::{Membership, RoomStore, StoredEvent};
use serde_json::{Value as JsonValue, json};

use super::decide::{self, LazyMembers, StateRead};
use super::{Pass, Syncer};
use crate::rooms::filter::type_allowed;
use crate::rooms::{ClientEventOptions, EventFormatter, Visibility, format_token};
use crate::{Error, json_object};

/// State event types shown in an invite or knock (spec: "stripped state"
/// should include these so the room can be displayed).
pub(crate) const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// The room as the user may see it before joining (an invite or a
/// knock): a few state events, stripped, and their own membership event,
/// as of that event. `None` if that event comes from an ignored user
/// (spec "Ignoring Users": "Servers must not send room invites from
/// ignored users to clients"). `/sync` and sliding sync both send it.
pub(crate) async fn stripped_state(
    rooms: &dyn RoomStore,
    formatter: &EventFormatter,
    viewer: &ClientEventOptions,
    m: &Membership,
    ignored: &BTreeSet<String>,
) -> Result<Option<Vec<JsonValue>>, Error> {
    let state = rooms.state_at(&m.room_id, Some(m.stream_pos)).await?;
    if state.iter().any(|e| e.event_id == m.event_id && ignored.contains(&e.sender)) {
        return Ok(None);
    }
    let mut stripped = Vec::new();
    for e in state.iter().filter(|e| INVITE_STATE_TYPES.contains(&e.event_type.as_str()) || e.event_id == m.event_id) {
        let formatted = formatter.client_events(std::slice::from_ref(e), viewer).await?.remove(0);
        stripped.push(json!({
            "type": formatted["type"],
            "state_key": formatted["state_key"],
            "sender": formatted["sender"],
            "content": formatted["content"],
        }));
    }
    Ok(Some(stripped))
}

/// Sync serves events without their `room_id` (the spec's
/// `ClientEventWithoutRoomID`): the room is the key they sit under.
pub(crate) fn without_room_ids(mut events: Vec<JsonValue>) -> Vec<JsonValue> {
    for event in &mut events {
        if let Some(fields) = event.as_object_mut() {
            fields.remove("room_id");
        }
    }
    events
}

/// Heroes in a room summary: "the first 5 members" (spec).
const SUMMARY_HEROES: usize = 5;

pub(crate) struct RoomWindow {
    pub timeline: Vec<StoredEvent>,
    pub limited: bool,
    /// Position just before the first timeline event (or the window end).
    pub before_timeline: u64,
}

/// A room's `timeline` section.
fn timeline_section(events: Vec<JsonValue>, w: &RoomWindow) -> JsonValue {
    json_object([
        ("events", JsonValue::Array(events)),
        ("limited", json!(w.limited)),
        ("prev_batch", json!(format_token(w.before_timeline))),
    ])
}

/// Which events of a room a timeline window takes: the newest `limit`
/// in `(after, up_to]` that pass `filter` and are not from `ignored`
/// users (state events excepted).
pub(crate) struct TimelineWindow<'a> {
    pub after: u64,
    pub up_to: u64,
    pub limit: usize,
    pub filter: &'a RoomEventFilter,
    pub ignored: &'a BTreeSet<String>,
    /// The position of the user's membership event when they are joined
    /// now: they have been in the room ever since, so they may see every
    /// event after it whatever the history visibility, without a look at
    /// the room's past.
    pub joined_since: Option<u64>,
}

/// A room's timeline window as `user_id` may see it (history visibility
/// applied), whether it was cut short, and where it starts. `/sync` and
/// sliding sync both send it.
pub(crate) async fn timeline_window(
    rooms: &dyn RoomStore,
    visibility: &Visibility,
    user_id: &UserId,
    room_id: &str,
    w: TimelineWindow<'_>,
) -> Result<RoomWindow, Error> {
    let mut events = rooms.room_events(room_id, w.after, w.up_to, w.limit + 1, true).await?;
    let limited = events.len() > w.limit;
    events.truncate(w.limit);
    events.reverse();
    let before_timeline = events.first().map_or(w.up_to, |e| e.stream_pos - 1);
    let timeline: Vec<StoredEvent> =
        events.into_iter().filter(|e| type_allowed(w.filter, &e.event_type) && decide::visible(e, w.ignored)).collect();
    // History visibility: a member who joined a `joined`-visibility room
    // does not see what was said before.
    let timeline = if w.joined_since.is_some_and(|since| timeline.iter().all(|e| e.stream_pos > since)) {
        timeline
    } else {
        visibility.visible_events(user_id, room_id, timeline).await?
    };
    Ok(RoomWindow { timeline, limited, before_timeline })
}

impl Syncer {
    /// A joined room's section, or `None` if nothing in it is news.
    pub(super) async fn joined_room(
        &self,
        p: &Pass<'_>,
        m: &Membership,
        newly_joined: bool,
        account_data: Vec<JsonValue>,
    ) -> Result<Option<JsonValue>, Error> {
        let (req, room_id, now) = (p.req, m.room_id.as_str(), p.cut.events);
        // A room joined since the last sync is sent whole, like in an
        // initial sync.
        let window_since = if newly_joined { None } else { p.since.map(|s| s.events) };
        let joined_since =
            (m.membership == chancery_proto::ruma::events::room::member::MembershipState::Join).then_some(m.stream_pos);
        let (w, ephemeral) = tokio::try_join!(
            self.window(
                &p.user.user_id,
                room_id,
                window_since,
                now,
                p.limit,
                &req.filter.room.timeline,
                &p.ignored,
                joined_since
            ),
            self.ephemeral_events(p, room_id, newly_joined),
        )?;
        if !newly_joined
            && !req.full_state
            && w.timeline.is_empty()
            && !w.limited
            && account_data.is_empty()
            && ephemeral.is_empty()
        {
            return Ok(None);
        }
        // The summary's heroes' member events go with it.
        let is_member = |e: &StoredEvent| e.event_type == "m.room.member";
        let (summary, heroes) =
            if decide::summary_needed(window_since.is_none(), req.full_state, w.limited, w.timeline.iter().any(is_member)) {
                let (summary, heroes) = self.room_summary(room_id, &p.user.user_id).await?;
                (Some(summary), heroes)
            } else {
                (None, Vec::new())
            };
        let unread = async {
            if req.filter.room.timeline.unread_thread_notifications {
                let (main, threads) = self.deps.push.unread_counts_by_thread(&p.user.user_id, room_id).await?;
                Ok::<_, Error>((main, Some(threads)))
            } else {
                Ok((self.deps.push.unread_counts(&p.user.user_id, room_id).await?, None))
            }
        };
        let state = async {
            let state =
                self.state_section(p, room_id, window_since, req.full_state, req.use_state_after, &w, now, &heroes).await?;
            self.deps.formatter.client_events(&state, &p.viewer).await
        };
        let (state, timeline, (unread, unread_threads)) =
            tokio::try_join!(state, self.deps.formatter.client_events(&w.timeline, &p.viewer), unread)?;
        let state_key = decide::state_section_key(req.use_state_after, req.state_after_unstable);
        let mut room = json_object([
            ("timeline", timeline_section(without_room_ids(timeline), &w)),
            ("ephemeral", json_object([("events", JsonValue::Array(ephemeral))])),
            ("account_data", json_object([("events", JsonValue::Array(account_data))])),
        ]);
        if let Some(summary) = summary {
            room["summary"] = summary;
        }
        room["unread_notifications"] = unread;
        if let Some(threads) = unread_threads {
            room["unread_thread_notifications"] = threads;
        }
        room[state_key] = json_object([("events", JsonValue::Array(without_room_ids(state)))]);
        Ok(Some(room))
    }

    /// A left room's section: what happened up to (and including) the
    /// user's departure.
    pub(super) async fn left_room(&self, p: &Pass<'_>, m: &Membership, account_data: Vec<JsonValue>) -> Result<JsonValue, Error> {
        let since = p.since.map(|s| s.events);
        let w = self
            .window(&p.user.user_id, &m.room_id, since, m.stream_pos, p.limit, &p.req.filter.room.timeline, &p.ignored, None)
            .await?;
        let state_after = p.req.use_state_after;
        let state = self.state_section(p, &m.room_id, since, false, state_after, &w, m.stream_pos, &[]).await?;
        let timeline = without_room_ids(self.deps.formatter.client_events(&w.timeline, &p.viewer).await?);
        let mut room = json_object([
            ("timeline", timeline_section(timeline, &w)),
            ("account_data", json_object([("events", JsonValue::Array(account_data))])),
        ]);
        // Spec v1.16: a left room's state section follows `use_state_after`
        // too, up to the end of its timeline (the departure).
        let state_key = decide::state_section_key(state_after, p.req.state_after_unstable);
        let state = without_room_ids(self.deps.formatter.client_events(&state, &p.viewer).await?);
        room[state_key] = json_object([("events", JsonValue::Array(state))]);
        Ok(room)
    }

    /// The room as the user may see it before joining (see
    /// [`stripped_state`]).
    pub(super) async fn stripped_state(&self, p: &Pass<'_>, m: &Membership) -> Result<Option<Vec<JsonValue>>, Error> {
        stripped_state(self.deps.rooms.as_ref(), &self.deps.formatter, &p.viewer, m, &p.ignored).await
    }

    /// The room's `m.receipt` and `m.typing` events for this answer.
    async fn ephemeral_events(&self, p: &Pass<'_>, room_id: &str, whole_room: bool) -> Result<Vec<JsonValue>, Error> {
        let filter = &p.req.filter.room.ephemeral;
        let mut events = Vec::new();
        if type_allowed(filter, "m.receipt") {
            // A room joined since the last sync gets its current receipts,
            // like an initial sync.
            let after = match p.since {
                Some(s) if !whole_room => s.receipts,
                _ => 0,
            };
            events.extend(self.deps.ephemeral.receipt_events(room_id, after, p.cut.receipts, p.user.user_id.as_str()).await?);
        }
        if type_allowed(filter, "m.typing") && decide::send_typing(p.typing_facts(room_id), whole_room) {
            let typers = p.typing.rooms.get(room_id).map(|(_, typers)| typers.clone()).unwrap_or_default();
            events.push(json!({ "type": "m.typing", "content": { "user_ids": typers } }));
        }
        Ok(events)
    }

    /// The timeline window of a room between `since` (exclusive) and `up_to`.
    #[allow(clippy::too_many_arguments)]
    async fn window(
        &self,
        user_id: &UserId,
        room_id: &str,
        since: Option<u64>,
        up_to: u64,
        limit: usize,
        filter: &RoomEventFilter,
        ignored: &BTreeSet<String>,
        joined_since: Option<u64>,
    ) -> Result<RoomWindow, Error> {
        let window = TimelineWindow { after: since.unwrap_or(0), up_to, limit, filter, ignored, joined_since };
        timeline_window(self.deps.rooms.as_ref(), &self.deps.visibility, user_id, room_id, window).await
    }

    /// A room's `state` section (or, with `state_after`, that one): the
    /// whole state when the client gets the room whole, else the changes
    /// since its last sync, through the state filter and member
    /// lazy-loading. `end` is where the timeline ends.
    #[allow(clippy::too_many_arguments)]
    async fn state_section(
        &self,
        p: &Pass<'_>,
        room_id: &str,
        window_since: Option<u64>,
        full_state: bool,
        state_after: bool,
        w: &RoomWindow,
        end: u64,
        heroes: &[String],
    ) -> Result<Vec<StoredEvent>, Error> {
        let whole = window_since.is_none() || full_state;
        let filter = &p.req.filter.room.state;
        let user_id = p.user.user_id.as_str();
        // A whole room with lazy-loaded members reads only the members it
        // sends (a 10,000-member room costs as much as a small one).
        let lazy_whole = (whole && p.lazy != LazyMembers::Off && type_allowed(filter, "m.room.member")).then(|| {
            decide::wanted_members(&w.timeline, state_after, heroes, Some(user_id))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let state = match decide::state_read(window_since, full_state, state_after, lazy_whole, w.limited, w.before_timeline, end)
        {
            StateRead::Nothing => Vec::new(),
            StateRead::Changes { after, up_to } => self.deps.rooms.state_changes(room_id, after, up_to).await?,
            StateRead::At(at) => self.deps.rooms.state_at(room_id, Some(at)).await?,
            StateRead::AtWithMembers(at, members) => self.deps.rooms.state_at_with_members(room_id, Some(at), &members).await?,
        };
        let mut state: Vec<StoredEvent> = state.into_iter().filter(|e| type_allowed(filter, &e.event_type)).collect();
        if p.lazy == LazyMembers::Off || !type_allowed(filter, "m.room.member") {
            return Ok(state);
        }

        let wanted = decide::wanted_members(&w.timeline, state_after, heroes, whole.then_some(user_id));
        let is_member = |e: &StoredEvent| e.event_type == "m.room.member";
        if whole {
            state.retain(|e| !is_member(e) || e.state_key.as_deref().is_some_and(|k| wanted.contains(k)));
        } else {
            // Changes keep every membership change (the gap's must reach the
            // client); the members the timeline needs are added, as of its
            // start (or end, for `state_after`).
            let at = if state_after { end } else { w.before_timeline };
            let present: BTreeSet<String> = state.iter().filter(|e| is_member(e)).filter_map(|e| e.state_key.clone()).collect();
            for member in wanted.iter().filter(|m| !present.contains(**m)) {
                if let Some(event) = self.deps.rooms.state_event(room_id, "m.room.member", member, Some(at)).await? {
                    state.push(event);
                }
            }
        }
        if p.lazy == LazyMembers::SkipHeld {
            let cache = &self.lazy_members;
            // A room sent whole (joined since the last sync) gets every
            // member it needs: the client may have dropped the room when it
            // left it.
            if let Some(since) = p.since.as_ref().filter(|_| !whole) {
                let holds = cache.holds(user_id, &p.user.device_id, room_id, since);
                state.retain(|e| !is_member(e) || !holds(e.state_key.as_deref().unwrap_or_default(), &e.event_id));
            }
            // What the client holds after this answer: the state's member
            // events, then (unless `state_after` replaces it) the
            // timeline's, later ones winning.
            let timeline: &[StoredEvent] = if state_after { &[] } else { &w.timeline };
            let sent = state
                .iter()
                .chain(timeline)
                .filter(|e| is_member(e))
                .filter_map(|e| e.state_key.as_deref().map(|k| (k, e.event_id.as_str())));
            cache.record(user_id, &p.user.device_id, room_id, p.cut, sent);
        }
        Ok(state)
    }

    /// `summary`: member counts and up to five heroes (spec "Calculating
    /// the display name for a room"), and the heroes, whose member events
    /// lazy-loading clients need to name the room.
    async fn room_summary(&self, room_id: &str, user_id: &UserId) -> Result<(JsonValue, Vec<String>), Error> {
        let s = self.deps.rooms.member_summary(room_id, user_id.as_str(), SUMMARY_HEROES).await?;
        let summary = json!({ "m.heroes": s.heroes, "m.joined_member_count": s.joined, "m.invited_member_count": s.invited });
        Ok((summary, s.heroes))
    }
}
