//! The sync component: `/sync` v2 (client-server API "Syncing"): initial
//! and incremental syncs over the event stream, gappy timelines, the state
//! section or `state_after` (MSC4222), invites and knocks as stripped
//! state, rooms left since the last sync (unless forgotten), account data
//! (global and per room), receipts and typing as ephemeral events,
//! presence, the ignored-user list, and long-polling woken (through the
//! [`Notifier`]) only by changes to the user's rooms and data.
//!
//! Lazy-loaded members (`lazy_load_members` in the filter's `room.state`):
//! the state section carries only the member events of the timeline's
//! senders and the summary's heroes (plus the user's own on a join or a
//! full-state sync), and, unless `include_redundant_members` is set, not
//! those the device already holds ([`lazy_members`]). Membership changes
//! since the last sync are always sent (spec: "the server MUST return
//! membership events for events in the gap").
//!
//! A `since` token is a [`StreamToken`], one position per stream; every
//! query of one answer is bounded by the positions read at its start, so
//! an answer is a consistent cut of each stream and the next sync
//! continues exactly after it.
//!
//! A pass (`sync_once`) reads, then decides through the pure functions of
//! `decide.rs`; each room's section is assembled in `rooms.rs`.
//!
//! In memory, per node: which member events each device holds.

pub(crate) mod decide;
mod lazy_members;
pub(crate) mod rooms;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chancery_proto::limits::{
    MAX_LONG_POLLS_PER_USER, MAX_SYNC_ACCOUNT_DATA_BYTES, MAX_SYNC_ACCOUNT_DATA_ENTRIES, MAX_SYNC_TIMEOUT_MS,
};
use chancery_proto::ruma::api::client::filter::FilterDefinition;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::presence::PresenceState;
use chancery_store::{AccountDataBatchLimits, ForgottenRoomStore, Membership, RoomStore, StreamStore, account_data_entry_bytes};
use serde_json::{Map, Value as JsonValue, json};
use tokio::time::Instant;

use crate::account_data::AccountData;
use crate::ephemeral::{Ephemeral, TypingSnapshot};
use crate::keys::Keys;
use crate::notifier::Notifier;
use crate::push::Push;
use crate::rooms::filter::{type_allowed, types_allowed};
use crate::rooms::{ClientEventOptions, EventFormatter, Visibility};
use crate::stream_token::StreamToken;
use crate::{AuthedUser, Error, json_object};
use decide::{LazyMembers, RoomFacts, Section, TypingFacts};
use lazy_members::LazyMembersCache;

/// How long a user with too many syncs waiting is told to wait.
const LONG_POLLS_RETRY_AFTER_MS: u64 = 1000;

/// What the client asked for.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub since: Option<String>,
    pub timeout_ms: u64,
    pub full_state: bool,
    pub use_state_after: bool,
    /// `use_state_after` was asked by MSC4222's unstable name, so the
    /// section is named `org.matrix.msc4222.state_after`.
    pub state_after_unstable: bool,
    /// How a syncing client counts for presence (`online` by default).
    pub set_presence: PresenceState,
    pub filter: FilterDefinition,
}

/// What one answer carries of account data at most; the rest follows in
/// the next answers.
const ACCOUNT_DATA_BATCH: AccountDataBatchLimits =
    AccountDataBatchLimits { max_entries: MAX_SYNC_ACCOUNT_DATA_ENTRIES, max_bytes: MAX_SYNC_ACCOUNT_DATA_BYTES };

/// An incremental sync asks the store which rooms changed when the gap
/// spans at most this many positions (events and receipts together)...
const MAX_CHANGED_SCAN: u64 = 10_000;
/// ...and it names at most this many rooms; otherwise every room is looked at.
const MAX_CHANGED_ROOMS: usize = 1_000;

/// What [`Syncer`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct SyncerDeps {
    pub streams: Arc<dyn StreamStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub forgotten: Arc<dyn ForgottenRoomStore>,
    pub account_data: Arc<AccountData>,
    pub push: Arc<Push>,
    pub ephemeral: Arc<Ephemeral>,
    pub visibility: Arc<Visibility>,
    pub formatter: Arc<EventFormatter>,
    pub notifier: Arc<Notifier>,
    /// To-device messages, device lists and key counts.
    pub keys: Arc<Keys>,
}

/// `/sync`.
pub struct Syncer {
    deps: SyncerDeps,
    /// Member events each device was sent by lazy-loading syncs.
    lazy_members: LazyMembersCache,
    /// Set when the server shuts down: long-polls answer at once.
    closing: tokio::sync::watch::Sender<bool>,
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

impl Pass<'_> {
    /// The typing facts of a room, for `decide`'s typing functions.
    fn typing_facts(&self, room_id: &str) -> TypingFacts {
        let (changed, typers) = self.typing.rooms.get(room_id).map_or((0, 0), |(changed, typers)| (*changed, typers.len()));
        TypingFacts { since: self.since.map(|s| s.typing), changed, floor: self.typing.floor, anyone_typing: typers > 0 }
    }
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
    async fn get(
        &mut self,
        account_data: &AccountData,
        user: &AuthedUser,
        account_data_pos: u64,
    ) -> Result<BTreeSet<String>, Error> {
        match &self.0 {
            Some((pos, ignored)) if *pos == account_data_pos => Ok(ignored.clone()),
            _ => {
                let ignored = account_data.ignored_users(user.user_id.as_str()).await?;
                self.0 = Some((account_data_pos, ignored.clone()));
                Ok(ignored)
            }
        }
    }
}

fn joined_rooms(memberships: &[Membership]) -> BTreeSet<String> {
    memberships.iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id.clone()).collect()
}

/// Account data changed in `(after, up_to]`, as much as one answer
/// carries, as events with their room (none for global ones); the position
/// the answer's token carries, and whether changes past it wait.
pub(crate) async fn account_data_batch(
    account_data: &AccountData,
    user_id: &str,
    after: u64,
    up_to: u64,
) -> Result<(Vec<(Option<String>, JsonValue)>, u64, bool), Error> {
    let changes = account_data.changes(user_id, after, up_to, ACCOUNT_DATA_BATCH).await?;
    let read: Vec<(u64, usize)> = changes
        .iter()
        .map(|e| (e.stream_pos, account_data_entry_bytes(e.room_id.as_deref(), &e.event_type, &e.content)))
        .collect();
    let (reach, more) = decide::account_data_reach(&read, up_to, ACCOUNT_DATA_BATCH);
    let mut events = Vec::with_capacity(changes.len());
    for entry in changes {
        let content: JsonValue =
            serde_json::from_str(&entry.content).map_err(|e| Error::Internal(format!("stored account data: {e}")))?;
        events.push((entry.room_id, json!({ "type": entry.event_type, "content": content })));
    }
    Ok((events, reach, more))
}

/// Account data of one answer.
struct AccountDataPart {
    global: Vec<JsonValue>,
    per_room: HashMap<String, Vec<JsonValue>>,
    /// The account-data position the answer's token carries.
    up_to: u64,
    /// Changes past `up_to` were left for the next answer.
    more: bool,
}

impl Syncer {
    pub fn new(deps: SyncerDeps) -> Self {
        Self { deps, lazy_members: LazyMembersCache::new(), closing: tokio::sync::watch::Sender::new(false) }
    }

    /// The server is shutting down: every waiting long-poll answers now
    /// with what it has (nothing new, the same position), and later ones
    /// do not wait, so that draining does not wait on them.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// `GET /sync`.
    pub async fn sync(&self, user: &AuthedUser, req: SyncRequest) -> Result<JsonValue, Error> {
        let since = req.since.as_deref().map(StreamToken::parse).transpose()?;
        let timeout = Duration::from_millis(req.timeout_ms.min(MAX_SYNC_TIMEOUT_MS));
        let deadline = Instant::now() + timeout;
        let may_wait = since.is_some() && !req.full_state && !timeout.is_zero();
        // Registered before the first cut, so a change committed after it
        // wakes this sync; the rooms follow what each pass finds.
        let mut interest = if may_wait {
            let rooms = self.deps.rooms.memberships_of_user(user.user_id.as_str()).await?;
            let interest = self.deps.notifier.register(user.user_id.as_str(), joined_rooms(&rooms), MAX_LONG_POLLS_PER_USER);
            Some(interest.ok_or(Error::LimitExceeded { retry_after_ms: LONG_POLLS_RETRY_AFTER_MS })?)
        } else {
            None
        };
        // Other nodes' commits (PostgreSQL LISTEN/NOTIFY); never fires on a
        // single-process backend.
        let mut remote = self.deps.streams.remote_changes();
        let mut ignored = IgnoredCache::default();
        let mut closing = self.closing.subscribe();
        // A new sync sequence: the client may have lost what it was sent.
        if since.is_none() || req.full_state {
            self.lazy_members.reset(user.user_id.as_str(), &user.device_id);
        }
        loop {
            if let Some(remote) = remote.as_mut() {
                remote.mark_unchanged();
            }
            let positions = self.deps.streams.stream_positions().await?;
            let cut = StreamToken {
                events: positions.events,
                account_data: positions.account_data,
                receipts: positions.receipts,
                typing: 0,   // read with the typing state itself, in sync_once
                presence: 0, // likewise
                to_device: positions.to_device,
                device_lists: positions.device_lists,
                // Not a `/sync` stream; carried so a token stays one cut.
                thread_subscriptions: positions.thread_subscriptions,
            };
            let once = self.sync_once(user, &req, since, cut, &mut ignored).await?;
            // An initial sync, a full-state sync or one with news answers at
            // once; otherwise wait for a change to the user's rooms or data,
            // for a typing notification to run out, or for the timeout.
            let Some(interest) = interest.as_mut().filter(|_| !once.has_news && Instant::now() < deadline && !*closing.borrow())
            else {
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
                _ = closing.wait_for(|closing| *closing) => return Ok(once.body),
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
        // Independent reads, side by side (on PostgreSQL, each its own
        // round trip at the same time).
        let (memberships, account_data, rooms_with_news) = tokio::try_join!(
            async { Ok::<_, Error>(self.deps.rooms.memberships_of_user(user.user_id.as_str()).await?) },
            self.account_data_since(user, req, since, cut),
            self.rooms_with_news(req, since, cut),
        )?;
        let AccountDataPart { global: mut global_account_data, per_room: mut room_account_data, up_to, more } = account_data;
        cut.account_data = up_to;
        let memberships: Vec<&Membership> =
            memberships.iter().filter(|m| m.stream_pos <= cut.events && decide::room_allowed(&req.filter, &m.room_id)).collect();

        if since.is_none() && !global_account_data.iter().any(|e| e["type"] == "m.push_rules") {
            // Clients read their push rules from the initial sync; users who
            // never changed them have the server defaults.
            let ruleset = self.deps.push.push_ruleset(&user.user_id).await?;
            global_account_data.push(json!({ "type": "m.push_rules", "content": { "global": ruleset } }));
        }
        self.deps.ephemeral.touch_presence(user, &req.set_presence);
        let joined: Vec<&str> =
            memberships.iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id.as_str()).collect();
        let (presence, presence_serial) =
            self.deps.ephemeral.presence_events(user, &joined, since.map_or(0, |s| s.presence)).await?;
        cut.presence = presence_serial;
        let ignored = ignored.get(&self.deps.account_data, user, cut.account_data).await?;
        let typing = self.deps.ephemeral.typing_snapshot(joined.iter().copied());
        // Never behind the client's token: tokens of another node (or an
        // earlier run) may carry a higher serial, and going back would
        // deliver the changes in between again and again.
        cut.typing = since.map_or(typing.serial, |s| s.typing.max(typing.serial));
        let next_typing_expiry = typing.next_expiry;
        let lazy = LazyMembers::of(&req.filter);
        let limit = decide::timeline_limit(&req.filter);
        let pass = Pass { user, req, since, cut, limit, viewer: ClientEventOptions::from(user), ignored, typing, lazy };
        let forgotten: BTreeSet<String> =
            if memberships.iter().any(|m| matches!(m.membership, MembershipState::Leave | MembershipState::Ban)) {
                self.deps.forgotten.forgotten_rooms(user.user_id.as_str()).await?.into_iter().collect()
            } else {
                BTreeSet::new()
            };
        let typing_allowed = type_allowed(&req.filter.room.ephemeral, "m.typing");
        // Left (or banned from) since the token, whether or not the room is
        // in this answer (a forgotten one is not): its members may now be
        // `device_lists.left`.
        let left_any = since.is_some_and(|s| {
            memberships
                .iter()
                .any(|m| matches!(m.membership, MembershipState::Leave | MembershipState::Ban) && m.stream_pos > s.events)
        });
        let rooms = async {
            let mut join = Map::new();
            let mut invite = Map::new();
            let mut knock = Map::new();
            let mut leave = Map::new();
            for m in memberships {
                let account_data = room_account_data.remove(&m.room_id).unwrap_or_default();
                let facts = RoomFacts {
                    membership_changed: since.is_none_or(|s| m.stream_pos > s.events),
                    has_account_data: !account_data.is_empty(),
                    store_news: rooms_with_news.as_ref().map(|changed| changed.contains(&m.room_id)),
                    typing_news: typing_allowed && decide::typing_news(pass.typing_facts(&m.room_id)),
                    forgotten: forgotten.contains(&m.room_id),
                };
                match decide::section(&m.membership, facts, since.is_none(), req.filter.room.include_leave) {
                    Section::Skip => {}
                    Section::Joined => {
                        if let Some(room) = self.joined_room(&pass, m, facts.membership_changed, account_data).await? {
                            join.insert(m.room_id.clone(), room);
                        }
                    }
                    Section::Invited => {
                        if let Some(events) = self.stripped_state(&pass, m).await? {
                            invite.insert(m.room_id.clone(), json!({ "invite_state": { "events": events } }));
                        }
                    }
                    Section::Knocked => {
                        if let Some(events) = self.stripped_state(&pass, m).await? {
                            knock.insert(m.room_id.clone(), json!({ "knock_state": { "events": events } }));
                        }
                    }
                    Section::Left => {
                        leave.insert(m.room_id.clone(), self.left_room(&pass, m, account_data).await?);
                    }
                }
            }
            Ok::<_, Error>((join, invite, knock, leave))
        };
        // The device's inbox and key counts are read while the rooms are;
        // the device lists need to know what the rooms carried.
        let (mut keys, (join, invite, knock, leave)) = tokio::try_join!(self.deps.keys.sync_inbox(user, since, pass.cut), rooms)?;
        let membership_news = decide::membership_news(&req.filter, join.values(), left_any || !leave.is_empty());
        keys.device_lists = self.deps.keys.sync_device_lists(user, since, pass.cut, membership_news).await?;
        let mut cut = pass.cut;
        cut.to_device = keys.to_device_up_to;
        let has_news = more
            || keys.has_news()
            || keys.more_to_device
            || decide::has_news(join.len() + invite.len() + knock.len() + leave.len(), global_account_data.len(), presence.len());
        let rooms = json_object([
            ("join", JsonValue::Object(join)),
            ("invite", JsonValue::Object(invite)),
            ("leave", JsonValue::Object(leave)),
            ("knock", JsonValue::Object(knock)),
        ]);
        let mut body = json_object([
            ("next_batch", json!(cut.to_string())),
            ("account_data", json_object([("events", JsonValue::from(global_account_data))])),
            ("presence", json_object([("events", JsonValue::from(presence))])),
            ("rooms", rooms),
        ]);
        keys.write_into(&mut body);
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
        let changed =
            self.deps.streams.rooms_changed((s.events, cut.events), (s.receipts, cut.receipts), MAX_CHANGED_ROOMS).await?;
        Ok(changed.map(|rooms| rooms.into_iter().collect()))
    }

    /// Account data changed since the token (all of it on an initial sync,
    /// as much as one answer carries), as events: the global ones, and the
    /// per-room ones by room.
    async fn account_data_since(
        &self,
        user: &AuthedUser,
        req: &SyncRequest,
        since: Option<StreamToken>,
        cut: StreamToken,
    ) -> Result<AccountDataPart, Error> {
        let after = since.map_or(0, |s| s.account_data);
        let (changes, up_to, more) =
            account_data_batch(&self.deps.account_data, user.user_id.as_str(), after, cut.account_data).await?;
        let mut global = Vec::new();
        let mut per_room: HashMap<String, Vec<JsonValue>> = HashMap::new();
        for (room_id, event) in changes {
            let event_type = event["type"].as_str().unwrap_or_default().to_owned();
            match room_id {
                None => {
                    let filter = &req.filter.account_data;
                    if types_allowed(filter.types.as_deref(), &filter.not_types, &event_type) {
                        global.push(event);
                    }
                }
                Some(room_id) => {
                    if type_allowed(&req.filter.room.account_data, &event_type) {
                        per_room.entry(room_id).or_default().push(event);
                    }
                }
            }
        }
        Ok(AccountDataPart { global, per_room, up_to, more })
    }
}
