//! `/sync` v2 (client-server API "Syncing"): initial and incremental
//! syncs over the event stream, gappy timelines, the state section or
//! `state_after` (MSC4222), invites and knocks as stripped state, rooms
//! left since the last sync (unless forgotten), account data (global and
//! per room), receipts and typing as ephemeral events, presence, the
//! ignored-user list, and long-polling woken (through
//! [`crate::wakeups`]) only by changes to the user's rooms and data.
//!
//! Lazy-loaded members (`lazy_load_members` in the filter's `room.state`):
//! the state section carries only the member events of the timeline's
//! senders and the summary's heroes (plus the user's own on a join or a
//! full-state sync), and, unless `include_redundant_members` is set, not
//! those the device already holds ([`crate::lazy_members`]). Membership
//! changes since the last sync are always sent (spec: "the server MUST
//! return membership events for events in the gap").
//!
//! A `since` token is a [`StreamToken`], one position per stream; every
//! query of one answer is bounded by the positions read at its start, so
//! an answer is a consistent cut of each stream and the next sync
//! continues exactly after it.

use chancery_proto::ruma::events::room::member::MembershipState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chancery_proto::limits::{DEFAULT_SYNC_TIMELINE_LIMIT, MAX_SYNC_TIMELINE_LIMIT, MAX_SYNC_TIMEOUT_MS};
use chancery_proto::ruma::api::client::filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter};
use chancery_store::{AccountDataEntry, Membership, Receipt, StoredEvent};
use serde_json::{Map, Value as JsonValue, json};
use tokio::time::Instant;

use crate::receipts::READ_PRIVATE;
use crate::rooms::ClientEventOptions;
use crate::rooms::filter::{type_allowed, types_allowed};
use crate::rooms::read::format_token;
use crate::stream_token::StreamToken;
use crate::typing::TypingSnapshot;
use crate::{AuthedUser, Error, Services};

/// What the client asked for.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub since: Option<String>,
    pub timeout_ms: u64,
    pub full_state: bool,
    pub use_state_after: bool,
    /// `online` (the default), `unavailable` or `offline`: how a syncing
    /// client counts for presence.
    pub set_presence: String,
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

/// An incremental sync asks the store which rooms changed when the gap
/// spans at most this many positions (events and receipts together)...
const MAX_CHANGED_SCAN: u64 = 10_000;
/// ...and it names at most this many rooms; otherwise every room is looked at.
const MAX_CHANGED_ROOMS: usize = 1_000;

/// Whether the room's typing list goes into this answer (as `ephemeral`
/// decides for a room the client already has).
fn typing_news(p: &Pass<'_>, room_id: &str) -> bool {
    if !type_allowed(&p.req.filter.room.ephemeral, "m.typing") {
        return false;
    }
    let changed = p.typing.rooms.get(room_id).map_or(0, |(changed, _)| *changed);
    match p.since {
        // The client may hold typing state this node never knew.
        Some(s) if s.typing < p.typing.floor => true,
        Some(s) => changed > s.typing,
        None => true,
    }
}

/// Heroes in a room summary: "the first 5 members" (spec).
const SUMMARY_HEROES: usize = 5;

/// Timeline events of ignored users are not delivered; their state events
/// are (spec "Ignoring Users": the room must not look different).
fn visible(event: &StoredEvent, ignored: &BTreeSet<String>) -> bool {
    event.state_key.is_some() || !ignored.contains(&event.sender)
}

fn room_allowed(filter: &FilterDefinition, room_id: &str) -> bool {
    let room = &filter.room;
    room.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == room_id))
        && !room.not_rooms.iter().any(|r| r.as_str() == room_id)
}

/// How this sync loads member events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LazyMembers {
    /// Every member event of the state.
    Off,
    /// Those the answer needs, every time (`include_redundant_members`).
    AlwaysSend,
    /// Those the answer needs and the device does not hold yet.
    SkipHeld,
}

impl LazyMembers {
    fn of(filter: &FilterDefinition) -> Self {
        match filter.room.state.lazy_load_options {
            LazyLoadOptions::Disabled => Self::Off,
            LazyLoadOptions::Enabled { include_redundant_members: true } => Self::AlwaysSend,
            LazyLoadOptions::Enabled { include_redundant_members: false } => Self::SkipHeld,
        }
    }
}

/// What one pass of a sync works from: the request, the cut of every
/// stream, and the per-user data read once per pass.
struct Pass<'a> {
    user: &'a AuthedUser,
    req: &'a SyncRequest,
    since: Option<StreamToken>,
    /// The positions this answer covers up to (and its `next_batch`).
    cut: StreamToken,
    limit: usize,
    viewer: ClientEventOptions,
    ignored: BTreeSet<String>,
    typing: TypingSnapshot,
    lazy: LazyMembers,
}

/// One pass's answer, and what a sync waiting after it needs.
struct OnePass {
    body: JsonValue,
    has_news: bool,
    next_typing_expiry: Option<Instant>,
    joined: BTreeSet<String>,
}

/// The user's ignored list, read again only when their account data moved.
#[derive(Default)]
struct IgnoredCache(Option<(u64, BTreeSet<String>)>);

impl IgnoredCache {
    async fn get(&mut self, services: &Services, user: &AuthedUser, account_data_pos: u64) -> Result<BTreeSet<String>, Error> {
        match &self.0 {
            Some((pos, ignored)) if *pos == account_data_pos => Ok(ignored.clone()),
            _ => {
                let ignored = services.ignored_users(user.user_id.as_str()).await?;
                self.0 = Some((account_data_pos, ignored.clone()));
                Ok(ignored)
            }
        }
    }
}

fn joined_rooms(memberships: &[Membership]) -> BTreeSet<String> {
    memberships.iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id.clone()).collect()
}

/// Sync serves events without their `room_id` (the spec's
/// `ClientEventWithoutRoomID`): the room is the key they sit under.
fn without_room_ids(mut events: Vec<JsonValue>) -> Vec<JsonValue> {
    for event in &mut events {
        if let Some(fields) = event.as_object_mut() {
            fields.remove("room_id");
        }
    }
    events
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
        let since = req.since.as_deref().map(StreamToken::parse).transpose()?;
        let timeout = Duration::from_millis(req.timeout_ms.min(MAX_SYNC_TIMEOUT_MS));
        let deadline = Instant::now() + timeout;
        let may_wait = since.is_some() && !req.full_state && !timeout.is_zero();
        // Registered before the first cut, so a change committed after it
        // wakes this sync; the rooms follow what each pass finds.
        let mut interest = if may_wait {
            let rooms = self.store().memberships_of_user(user.user_id.as_str()).await?;
            Some(self.inner.wakeups.register(user.user_id.as_str(), joined_rooms(&rooms)))
        } else {
            None
        };
        // Other nodes' commits (PostgreSQL LISTEN/NOTIFY); never fires on a
        // single-process backend.
        let mut remote = self.store().remote_changes();
        let mut ignored = IgnoredCache::default();
        // A new sync sequence: the client may have lost what it was sent.
        if since.is_none() || req.full_state {
            self.inner.lazy_members.reset(user.user_id.as_str(), &user.device_id);
        }
        loop {
            if let Some(remote) = remote.as_mut() {
                remote.mark_unchanged();
            }
            let positions = self.store().stream_positions().await?;
            let cut = StreamToken {
                events: positions.events,
                account_data: positions.account_data,
                receipts: positions.receipts,
                typing: 0,   // read with the typing state itself, in sync_once
                presence: 0, // likewise
            };
            let once = self.sync_once(user, &req, since, cut, &mut ignored).await?;
            // An initial sync, a full-state sync or one with news answers at
            // once; otherwise wait for a change to the user's rooms or data,
            // for a typing notification to run out, or for the timeout.
            let Some(interest) = interest.as_mut().filter(|_| !once.has_news && Instant::now() < deadline) else {
                return Ok(once.body);
            };
            interest.set_rooms(once.joined);
            let wake_at = once.next_typing_expiry.map_or(deadline, |expiry| expiry.min(deadline));
            tokio::select! {
                () = interest.changed() => {}
                Ok(()) = async {
                    match remote.as_mut() {
                        Some(remote) => remote.changed().await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = tokio::time::sleep_until(wake_at) => {
                    if wake_at >= deadline {
                        return Ok(once.body);
                    }
                }
            }
        }
    }

    async fn sync_once(
        &self,
        user: &AuthedUser,
        req: &SyncRequest,
        since: Option<StreamToken>,
        mut cut: StreamToken,
        ignored: &mut IgnoredCache,
    ) -> Result<OnePass, Error> {
        let limit = req
            .filter
            .room
            .timeline
            .limit
            .map(|l| u64::from(l) as usize)
            .unwrap_or(DEFAULT_SYNC_TIMELINE_LIMIT)
            .clamp(1, MAX_SYNC_TIMELINE_LIMIT);
        // Independent reads, side by side (on PostgreSQL, each its own
        // round trip at the same time).
        let (memberships, (mut global_account_data, mut room_account_data), quiet_rooms_known) = tokio::try_join!(
            async { Ok::<_, Error>(self.store().memberships_of_user(user.user_id.as_str()).await?) },
            self.account_data_since(user, req, since, cut),
            self.rooms_with_news(req, since, cut),
        )?;
        let memberships: Vec<&Membership> =
            memberships.iter().filter(|m| m.stream_pos <= cut.events && room_allowed(&req.filter, &m.room_id)).collect();

        if since.is_none() && !global_account_data.iter().any(|e| e["type"] == "m.push_rules") {
            // Clients read their push rules from the initial sync; users who
            // never changed them have the server defaults.
            let ruleset = self.push_ruleset(&user.user_id).await?;
            global_account_data.push(json!({ "type": "m.push_rules", "content": { "global": ruleset } }));
        }
        self.touch_presence(user, if req.set_presence.is_empty() { "online" } else { &req.set_presence });
        let joined: Vec<&str> =
            memberships.iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id.as_str()).collect();
        let (presence, presence_serial) = self.presence_events(user, &joined, since.map_or(0, |s| s.presence)).await?;
        cut.presence = presence_serial;
        let ignored = ignored.get(self, user, cut.account_data).await?;
        let typing = self.typing_snapshot(joined.iter().copied());
        // Never behind the client's token: tokens of another node (or an
        // earlier run) may carry a higher serial, and going back would
        // deliver the changes in between again and again.
        cut.typing = since.map_or(typing.serial, |s| s.typing.max(typing.serial));
        let next_typing_expiry = typing.next_expiry;
        let lazy = LazyMembers::of(&req.filter);
        let pass = Pass { user, req, since, cut, limit, viewer: ClientEventOptions::from(user), ignored, typing, lazy };
        let forgotten: BTreeSet<String> =
            if memberships.iter().any(|m| matches!(m.membership, MembershipState::Leave | MembershipState::Ban)) {
                self.store().forgotten_rooms(user.user_id.as_str()).await?.into_iter().collect()
            } else {
                BTreeSet::new()
            };
        let mut join = Map::new();
        let mut invite = Map::new();
        let mut knock = Map::new();
        let mut leave = Map::new();
        for m in memberships {
            let changed_since = since.is_none_or(|s| m.stream_pos > s.events);
            let account_data = room_account_data.remove(&m.room_id).unwrap_or_default();
            match m.membership {
                MembershipState::Join
                    if !changed_since
                        && account_data.is_empty()
                        && quiet_rooms_known.as_ref().is_some_and(|changed| !changed.contains(&m.room_id))
                        && !typing_news(&pass, &m.room_id) => {}
                MembershipState::Join => {
                    if let Some(room) = self.sync_joined_room(&pass, m, changed_since, account_data).await? {
                        join.insert(m.room_id.clone(), room);
                    }
                }
                MembershipState::Invite if changed_since => {
                    if let Some(events) = self.stripped_state(&pass, m).await? {
                        invite.insert(m.room_id.clone(), json!({ "invite_state": { "events": events } }));
                    }
                }
                MembershipState::Knock if changed_since => {
                    if let Some(events) = self.stripped_state(&pass, m).await? {
                        knock.insert(m.room_id.clone(), json!({ "knock_state": { "events": events } }));
                    }
                }
                MembershipState::Leave | MembershipState::Ban if forgotten.contains(&m.room_id) => {}
                MembershipState::Leave | MembershipState::Ban
                    if since.is_some() && changed_since || (since.is_none() && req.filter.room.include_leave) =>
                {
                    leave.insert(m.room_id.clone(), self.sync_left_room(&pass, m, account_data).await?);
                }
                _ => {}
            }
        }
        let has_news = !(join.is_empty()
            && invite.is_empty()
            && knock.is_empty()
            && leave.is_empty()
            && global_account_data.is_empty()
            && presence.is_empty());
        let body = json!({
            "next_batch": pass.cut.to_string(),
            "account_data": { "events": global_account_data },
            "presence": { "events": presence },
            "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
        });
        Ok(OnePass { body, has_news, next_typing_expiry, joined: joined.into_iter().map(str::to_owned).collect() })
    }

    /// The rooms with events or receipts between the tokens, when that is
    /// cheap to know: an incremental sync over a short gap looks only at
    /// them, so a user in 500 rooms does not cost 500 reads per message.
    async fn rooms_with_news(
        &self,
        req: &SyncRequest,
        since: Option<StreamToken>,
        cut: StreamToken,
    ) -> Result<Option<BTreeSet<String>>, Error> {
        let Some(s) = since.filter(|_| !req.full_state) else { return Ok(None) };
        let (events, receipts) = (cut.events.saturating_sub(s.events), cut.receipts.saturating_sub(s.receipts));
        if events + receipts > MAX_CHANGED_SCAN {
            return Ok(None);
        }
        let changed = self.store().rooms_changed((s.events, cut.events), (s.receipts, cut.receipts), MAX_CHANGED_ROOMS).await?;
        Ok(changed.map(|rooms| rooms.into_iter().collect()))
    }

    /// Account data changed since the token (all of it on an initial sync),
    /// as events: the global ones, and the per-room ones by room.
    async fn account_data_since(
        &self,
        user: &AuthedUser,
        req: &SyncRequest,
        since: Option<StreamToken>,
        cut: StreamToken,
    ) -> Result<(Vec<JsonValue>, HashMap<String, Vec<JsonValue>>), Error> {
        let after = since.map_or(0, |s| s.account_data);
        let changes: Vec<AccountDataEntry> = if after < cut.account_data {
            self.store().account_data_changes(user.user_id.as_str(), after, cut.account_data).await?
        } else {
            Vec::new()
        };
        let mut global = Vec::new();
        let mut per_room: HashMap<String, Vec<JsonValue>> = HashMap::new();
        for entry in changes {
            let content: JsonValue =
                serde_json::from_str(&entry.content).map_err(|e| Error::Internal(format!("stored account data: {e}")))?;
            let event = json!({ "type": entry.event_type, "content": content });
            match entry.room_id {
                None => {
                    let filter = &req.filter.account_data;
                    if types_allowed(filter.types.as_deref(), &filter.not_types, &entry.event_type) {
                        global.push(event);
                    }
                }
                Some(room_id) => {
                    if type_allowed(&req.filter.room.account_data, &entry.event_type) {
                        per_room.entry(room_id).or_default().push(event);
                    }
                }
            }
        }
        Ok((global, per_room))
    }

    /// The room's `m.receipt` and `m.typing` events for this answer.
    async fn ephemeral(&self, p: &Pass<'_>, room_id: &str, whole_room: bool) -> Result<Vec<JsonValue>, Error> {
        let filter = &p.req.filter.room.ephemeral;
        let mut events = Vec::new();
        if type_allowed(filter, "m.receipt") {
            // A room joined since the last sync gets its current receipts,
            // like an initial sync.
            let after = match p.since {
                Some(s) if !whole_room => s.receipts,
                _ => 0,
            };
            if after < p.cut.receipts {
                let receipts = self.store().room_receipts(room_id, after, p.cut.receipts).await?;
                events.extend(receipt_events(&receipts, p.user.user_id.as_str()));
            }
        }
        if type_allowed(filter, "m.typing") {
            let (changed, typers) = p.typing.rooms.get(room_id).cloned().unwrap_or_default();
            let send = match p.since {
                Some(_) if whole_room => !typers.is_empty(),
                None => !typers.is_empty(),
                // The client may hold typing state this node never knew:
                // give it every room's list once.
                Some(s) if s.typing < p.typing.floor => true,
                Some(s) => changed > s.typing,
            };
            if send {
                events.push(json!({ "type": "m.typing", "content": { "user_ids": typers } }));
            }
        }
        Ok(events)
    }

    /// The timeline window of a room between `since` (exclusive) and `up_to`.
    async fn window(
        &self,
        user_id: &chancery_proto::ruma::UserId,
        room_id: &str,
        since: Option<u64>,
        up_to: u64,
        limit: usize,
        filter: &RoomEventFilter,
        ignored: &BTreeSet<String>,
    ) -> Result<RoomWindow, Error> {
        let after = since.unwrap_or(0);
        let mut events = self.store().room_events(room_id, after, up_to, limit + 1, true).await?;
        let limited = events.len() > limit;
        events.truncate(limit);
        events.reverse();
        let before_timeline = events.first().map_or(up_to, |e| e.stream_pos - 1);
        let timeline: Vec<StoredEvent> =
            events.into_iter().filter(|e| type_allowed(filter, &e.event_type) && visible(e, ignored)).collect();
        // History visibility: a member who joined a `joined`-visibility room
        // does not see what was said before.
        let timeline = self.visible_events(user_id, room_id, timeline).await?;
        Ok(RoomWindow { timeline, limited, before_timeline })
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
            wanted_members(&w.timeline, state_after, heroes, Some(user_id)).into_iter().map(str::to_owned).collect::<Vec<_>>()
        });
        let state = match (window_since, full_state, state_after, lazy_whole) {
            // MSC4222: the state at the end of the timeline, as a delta when
            // the client already has the room.
            (Some(s), false, true, _) => self.store().state_changes(room_id, s, end).await?,
            (_, _, true, Some(members)) => self.store().state_at_with_members(room_id, Some(end), &members).await?,
            (_, _, true, None) => self.store().state_at(room_id, Some(end)).await?,
            (Some(s), false, false, _) if w.limited => self.store().state_changes(room_id, s, w.before_timeline).await?,
            (Some(_), false, false, _) => Vec::new(),
            (_, _, false, Some(members)) => {
                self.store().state_at_with_members(room_id, Some(w.before_timeline), &members).await?
            }
            (_, _, false, None) => self.store().state_at(room_id, Some(w.before_timeline)).await?,
        };
        let mut state: Vec<StoredEvent> = state.into_iter().filter(|e| type_allowed(filter, &e.event_type)).collect();
        if p.lazy == LazyMembers::Off || !type_allowed(filter, "m.room.member") {
            return Ok(state);
        }

        let wanted = wanted_members(&w.timeline, state_after, heroes, whole.then_some(user_id));
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
                if let Some(event) = self.store().state_event(room_id, "m.room.member", member, Some(at)).await? {
                    state.push(event);
                }
            }
        }
        if p.lazy == LazyMembers::SkipHeld {
            let cache = &self.inner.lazy_members;
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

    async fn sync_joined_room(
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
        let (w, ephemeral) = tokio::try_join!(
            self.window(&p.user.user_id, room_id, window_since, now, p.limit, &req.filter.room.timeline, &p.ignored),
            self.ephemeral(p, room_id, newly_joined),
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
        // The summary changes only with memberships: sent whole with the
        // room, then again when membership events come (spec: "may be
        // omitted" when unchanged; a gap may hold some), so a message in a
        // large room does not cost a count of its members per syncing
        // client. Its heroes' member events go with it.
        let is_member = |e: &StoredEvent| e.event_type == "m.room.member";
        let (summary, heroes) = if window_since.is_none() || req.full_state || w.limited || w.timeline.iter().any(is_member) {
            let (summary, heroes) = self.room_summary(room_id, p.user).await?;
            (Some(summary), heroes)
        } else {
            (None, Vec::new())
        };
        let unread = async {
            if req.filter.room.timeline.unread_thread_notifications {
                let (main, threads) = self.unread_counts_by_thread(&p.user.user_id, room_id).await?;
                Ok::<_, Error>((main, Some(threads)))
            } else {
                Ok((self.unread_counts(&p.user.user_id, room_id).await?, None))
            }
        };
        let state = async {
            let state =
                self.state_section(p, room_id, window_since, req.full_state, req.use_state_after, &w, now, &heroes).await?;
            self.client_events(&state, &p.viewer).await
        };
        let (state, timeline, (unread, unread_threads)) =
            tokio::try_join!(state, self.client_events(&w.timeline, &p.viewer), unread)?;
        let state_key = if req.use_state_after { "state_after" } else { "state" };
        let mut room = json!({
            "timeline": {
                "events": without_room_ids(timeline),
                "limited": w.limited,
                "prev_batch": format_token(w.before_timeline),
            },
            "ephemeral": { "events": ephemeral },
            "account_data": { "events": account_data },
        });
        if let Some(summary) = summary {
            room["summary"] = summary;
        }
        room["unread_notifications"] = unread;
        if let Some(threads) = unread_threads {
            room["unread_thread_notifications"] = threads;
        }
        room[state_key] = json!({ "events": without_room_ids(state) });
        Ok(Some(room))
    }

    /// The room as the user may see it before joining (an invite or a
    /// knock): a few state events, stripped, and their own membership
    /// event, as of that event. `None` if that event comes from an ignored
    /// user (spec "Ignoring Users": "Servers must not send room invites
    /// from ignored users to clients").
    async fn stripped_state(&self, p: &Pass<'_>, m: &Membership) -> Result<Option<Vec<JsonValue>>, Error> {
        let state = self.store().state_at(&m.room_id, Some(m.stream_pos)).await?;
        if state.iter().any(|e| e.event_id == m.event_id && p.ignored.contains(&e.sender)) {
            return Ok(None);
        }
        let mut stripped = Vec::new();
        for e in state.iter().filter(|e| INVITE_STATE_TYPES.contains(&e.event_type.as_str()) || e.event_id == m.event_id) {
            let formatted = self.client_events(std::slice::from_ref(e), &p.viewer).await?.remove(0);
            stripped.push(json!({
                "type": formatted["type"],
                "state_key": formatted["state_key"],
                "sender": formatted["sender"],
                "content": formatted["content"],
            }));
        }
        Ok(Some(stripped))
    }

    async fn sync_left_room(&self, p: &Pass<'_>, m: &Membership, account_data: Vec<JsonValue>) -> Result<JsonValue, Error> {
        // What happened up to (and including) the user's departure.
        let since = p.since.map(|s| s.events);
        let w = self
            .window(&p.user.user_id, &m.room_id, since, m.stream_pos, p.limit, &p.req.filter.room.timeline, &p.ignored)
            .await?;
        let state = self.state_section(p, &m.room_id, since, false, false, &w, m.stream_pos, &[]).await?;
        Ok(json!({
            "timeline": {
                "events": without_room_ids(self.client_events(&w.timeline, &p.viewer).await?),
                "limited": w.limited,
                "prev_batch": format_token(w.before_timeline),
            },
            "state": { "events": without_room_ids(self.client_events(&state, &p.viewer).await?) },
            "account_data": { "events": account_data },
        }))
    }

    /// `summary`: member counts and up to five heroes (spec "Calculating
    /// the display name for a room"), and the heroes, whose member events
    /// lazy-loading clients need to name the room.
    async fn room_summary(&self, room_id: &str, user: &AuthedUser) -> Result<(JsonValue, Vec<String>), Error> {
        let s = self.store().member_summary(room_id, user.user_id.as_str(), SUMMARY_HEROES).await?;
        let summary = json!({ "m.heroes": s.heroes, "m.joined_member_count": s.joined, "m.invited_member_count": s.invited });
        Ok((summary, s.heroes))
    }
}

/// Whose member events a lazy-loading client needs with this timeline:
/// every sender, unless (in a `state` section) the sender's own member
/// event came earlier in the timeline, which the client applies itself;
/// the heroes (spec: their member events "MUST be included in the
/// `state`, unless they are redundant"); and `me` when given (on a join or
/// a full-state sync the user's own membership MUST be sent).
fn wanted_members<'a>(
    timeline: &'a [StoredEvent],
    state_after: bool,
    heroes: &'a [String],
    me: Option<&'a str>,
) -> BTreeSet<&'a str> {
    let mut wanted: BTreeSet<&str> = heroes.iter().map(String::as_str).chain(me).collect();
    let mut in_timeline: BTreeSet<&str> = BTreeSet::new();
    for event in timeline {
        if !in_timeline.contains(event.sender.as_str()) {
            wanted.insert(&event.sender);
        }
        if !state_after && event.event_type == "m.room.member" {
            in_timeline.extend(event.state_key.as_deref());
        }
    }
    wanted
}

/// `m.receipt` events for these receipts, one per thread (spec
/// "Receipts", server behaviour: batched "into one event per room and
/// thread", which also keeps a user's unthreaded and threaded receipts on
/// one event apart). Private receipts only reach their owner.
fn receipt_events(receipts: &[Receipt], viewer: &str) -> Vec<JsonValue> {
    let mut by_thread: BTreeMap<Option<&str>, JsonValue> = BTreeMap::new();
    for r in receipts.iter().filter(|r| r.receipt_type != READ_PRIVATE || r.user_id == viewer) {
        let content = by_thread.entry(r.thread_id.as_deref()).or_insert_with(|| json!({}));
        let mut receipt = json!({ "ts": r.ts });
        if let Some(thread_id) = &r.thread_id {
            receipt["thread_id"] = json!(thread_id);
        }
        content[r.event_id.as_str()][r.receipt_type.as_str()][r.user_id.as_str()] = receipt;
    }
    by_thread.into_values().map(|content| json!({ "type": "m.receipt", "content": content })).collect()
}
