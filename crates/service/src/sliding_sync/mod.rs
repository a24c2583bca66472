//! Simplified sliding sync (MSC4186, as ruma's `sync_events::v5` and
//! matrix-sdk 0.18 speak it): the room list Element X shows, the rooms it
//! opens, and the extensions that carry to-device messages, device lists,
//! account data, receipts and typing.
//!
//! A connection is a device's `conn_id`; each answer is a position of it
//! (`pos` = `{connection}_{position}`), recorded in the store with the
//! stream token it was cut at and what it sent of each room
//! ([`decide::RoomRecord`]), so any node continues it and a client that
//! lost an answer asks again from the position before. The state at a
//! position never changes, so each node caches the last one per
//! connection (bounded).
//!
//! An answer reads the user's room list once (memberships with each
//! room's newest and newest "bump" event, kept by the write path), sorts
//! and filters it in memory, and then reads only the rooms it sends:
//! those of the lists' ranges and subscriptions that this connection has
//! never sent or that moved on since (their newest event is past what the
//! client holds), or whose config grew. Long-polls wait on the
//! [`Notifier`] like `/sync`.

mod decide;
mod extensions;
mod room;
mod room_lists;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chancery_proto::limits::{
    MAX_LONG_POLLS_PER_USER, MAX_SLIDING_CONNECTIONS_PER_DEVICE, MAX_SLIDING_LISTS, MAX_SLIDING_NAME_BYTES,
    MAX_SLIDING_RANGES_PER_LIST, MAX_SLIDING_REQUIRED_STATE, MAX_SLIDING_ROOMS_PER_ANSWER, MAX_SLIDING_SUBSCRIPTIONS,
    MAX_SLIDING_TIMELINE_LIMIT, MAX_SYNC_TIMEOUT_MS, SLIDING_CONNECTION_IDLE_MS, SLIDING_CONNECTIONS_CACHED,
};
use chancery_proto::ruma::api::client::sync::sync_events::v5::{Request, request};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::{ConnectionOwner, ForgottenRoomStore, RoomListEntry, RoomStore, SentRoom, SlidingSyncStore, StreamStore};
use futures_util::{StreamExt, TryStreamExt};
use hashlink::LruCache;
use serde_json::{Map, Value as JsonValue, json};
use tokio::time::Instant;

use crate::account_data::AccountData;
use crate::clock::Clock;
use crate::ephemeral::Ephemeral;
use crate::keys::Keys;
use crate::notifier::Notifier;
use crate::push::Push;
use crate::rooms::{EventFormatter, Visibility};
use crate::stream_token::StreamToken;
use crate::{AuthedUser, Error, json_object as object};
use decide::{RequiredState, RoomConfig, RoomRecord, RoomUpdate};

/// Rooms of one answer read at the same time.
const ROOMS_BUILT_AT_ONCE: usize = 8;

/// How long a user with too many waiting syncs is told to wait.
const LONG_POLLS_RETRY_AFTER_MS: u64 = 1000;

/// What [`SlidingSync`] is built from.
pub struct SlidingSyncDeps {
    pub store: Arc<dyn SlidingSyncStore>,
    pub streams: Arc<dyn StreamStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub forgotten: Arc<dyn ForgottenRoomStore>,
    pub account_data: Arc<AccountData>,
    pub push: Arc<Push>,
    pub ephemeral: Arc<Ephemeral>,
    pub visibility: Arc<Visibility>,
    pub formatter: Arc<EventFormatter>,
    pub notifier: Arc<Notifier>,
    pub keys: Arc<Keys>,
    /// The `thread_subscriptions` extension (MSC4308), when on.
    pub thread_subscriptions: Arc<crate::ThreadSubscriptions>,
    pub clock: Arc<dyn Clock>,
}

/// What a connection's client holds of each room, at one position.
type Records = Arc<BTreeMap<String, RoomRecord>>;

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
pub struct SlidingSync {
    deps: Arc<SlidingSyncDeps>,
    /// Per connection key: its last position and the records there.
    cache: Mutex<LruCache<u64, (u64, Records)>>,
    room_lists: room_lists::RoomLists,
    closing: tokio::sync::watch::Sender<bool>,
}

/// A request checked and reduced to what the answer needs.
struct Wanted {
    lists: BTreeMap<String, WantedList>,
    subscriptions: BTreeMap<String, RoomConfig>,
    extensions: request::Extensions,
}

struct WantedList {
    ranges: Vec<(u64, u64)>,
    filters: Option<request::ListFilters>,
    config: RoomConfig,
}

/// The connection an answer continues.
struct Connection {
    key: u64,
    /// The client's position; 0 on a new connection.
    base_pos: u64,
    since: Option<StreamToken>,
    records: Records,
}

/// One pass's answer.
struct Answer {
    body: JsonValue,
    has_news: bool,
    changed: Vec<(String, RoomRecord)>,
    cut: StreamToken,
    /// The user's rooms (their joined ones are what a long-poll waits on).
    rooms: room_lists::RoomList,
    next_typing_expiry: Option<Instant>,
}

fn config_of(required_state: &[(impl ToString, String)], timeline_limit: u64, what: &str) -> Result<RoomConfig, Error> {
    if required_state.len() > MAX_SLIDING_REQUIRED_STATE {
        return Err(Error::InvalidParam(format!("{what}: at most {MAX_SLIDING_REQUIRED_STATE} required_state entries")));
    }
    Ok(RoomConfig {
        timeline_limit: usize::try_from(timeline_limit).unwrap_or(usize::MAX).min(MAX_SLIDING_TIMELINE_LIMIT),
        required_state: RequiredState(required_state.iter().map(|(t, k)| (t.to_string(), k.clone())).collect()),
    })
}

/// Checks the request's sizes (MSC4186: at most 100 lists and 100
/// subscriptions, `M_INVALID_PARAM` beyond) and ranges.
fn wanted(req: Request) -> Result<Wanted, Error> {
    if req.lists.len() > MAX_SLIDING_LISTS {
        return Err(Error::InvalidParam(format!("at most {MAX_SLIDING_LISTS} lists")));
    }
    if req.room_subscriptions.len() > MAX_SLIDING_SUBSCRIPTIONS {
        return Err(Error::InvalidParam(format!("at most {MAX_SLIDING_SUBSCRIPTIONS} room subscriptions")));
    }
    let mut lists = BTreeMap::new();
    for (name, list) in req.lists {
        if name.len() > MAX_SLIDING_NAME_BYTES {
            return Err(Error::InvalidParam(format!("list names are at most {MAX_SLIDING_NAME_BYTES} bytes")));
        }
        if list.ranges.len() > MAX_SLIDING_RANGES_PER_LIST {
            return Err(Error::InvalidParam(format!("at most {MAX_SLIDING_RANGES_PER_LIST} ranges per list")));
        }
        let ranges: Vec<(u64, u64)> = list.ranges.iter().map(|(a, b)| (u64::from(*a), u64::from(*b))).collect();
        if ranges.iter().any(|(start, end)| start > end) {
            return Err(Error::InvalidParam(format!("list {name}: a range's start is after its end")));
        }
        let details = &list.room_details;
        let config = config_of(&details.required_state, details.timeline_limit.into(), &format!("list {name}"))?;
        lists.insert(name, WantedList { ranges, filters: list.filters, config });
    }
    let mut subscriptions = BTreeMap::new();
    for (room_id, sub) in req.room_subscriptions {
        let config = config_of(&sub.required_state, sub.timeline_limit.into(), room_id.as_str())?;
        subscriptions.insert(room_id.to_string(), config);
    }
    Ok(Wanted { lists, subscriptions, extensions: req.extensions })
}

/// `{connection}_{position}`.
fn parse_pos(pos: &str) -> Result<(u64, u64), Error> {
    let (key, at) = pos.split_once('_').ok_or(Error::UnknownPos)?;
    Ok((key.parse().map_err(|_| Error::UnknownPos)?, at.parse().map_err(|_| Error::UnknownPos)?))
}

/// A stored record; one this version cannot read (written by another)
/// makes the client start the connection again.
fn record_of(stored: &SentRoom) -> Result<RoomRecord, Error> {
    serde_json::from_str(&stored.record).map_err(|_| Error::UnknownPos)
}

impl SlidingSync {
    pub fn new(deps: SlidingSyncDeps) -> Self {
        let cache = Mutex::new(LruCache::new(SLIDING_CONNECTIONS_CACHED));
        Self {
            deps: Arc::new(deps),
            cache,
            room_lists: room_lists::RoomLists::new(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The server is shutting down: waiting long-polls answer now.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Forgets connections unused for [`SLIDING_CONNECTION_IDLE_MS`]
    /// (maintenance; idempotent, so nodes may overlap).
    pub async fn expire_idle_connections(&self) -> Result<u64, Error> {
        let before = self.deps.clock.now_ms().saturating_sub(SLIDING_CONNECTION_IDLE_MS);
        Ok(self.deps.store.expire_sliding_connections(before, 10_000).await?)
    }

    /// One request of a connection.
    pub async fn sync(&self, user: &AuthedUser, req: Request) -> Result<JsonValue, Error> {
        let conn_id = req.conn_id.clone().unwrap_or_default();
        if conn_id.len() > MAX_SLIDING_NAME_BYTES {
            return Err(Error::InvalidParam(format!("conn_id is at most {MAX_SLIDING_NAME_BYTES} bytes")));
        }
        let (pos, timeout, set_presence, txn_id) = (req.pos.clone(), req.timeout, req.set_presence.clone(), req.txn_id.clone());
        let wanted = wanted(req)?;
        let owner = ConnectionOwner { user_id: user.user_id.as_str(), device_id: &user.device_id, conn_id: &conn_id };
        self.deps.ephemeral.touch_presence(user, &set_presence);
        let Some(pos) = pos else {
            // A new connection answers at once (the MSC ignores `timeout`
            // then), from nothing: its answer is read while it is started.
            // Started now, not when the answer is recorded: of two requests
            // that start a connection (a client that gave up on the first),
            // the later one's survives, whichever finishes first.
            let fresh = Connection { key: 0, base_pos: 0, since: None, records: Arc::default() };
            let start = async {
                let now = self.deps.clock.now_ms();
                Ok::<_, Error>(self.deps.store.start_sliding_connection(owner, now, MAX_SLIDING_CONNECTIONS_PER_DEVICE).await?)
            };
            let (key, answer) = tokio::try_join!(start, self.pass(user, &wanted, &fresh))?;
            return self.finish(&Connection { key, ..fresh }, answer, txn_id).await;
        };
        let conn = self.connection(owner, &pos).await?;

        let timeout = timeout.unwrap_or_default();
        let deadline = Instant::now() + timeout.min(Duration::from_millis(MAX_SYNC_TIMEOUT_MS));
        let mut interest = if timeout.is_zero() {
            None
        } else {
            let at = self.deps.streams.stream_positions().await?.events;
            let rooms = self.room_lists.at(self.deps.store.as_ref(), user.user_id.as_str(), at, self.deps.clock.now_ms()).await?;
            let interest = self.deps.notifier.register(user.user_id.as_str(), rooms.joined.clone(), MAX_LONG_POLLS_PER_USER);
            Some(interest.ok_or(Error::LimitExceeded { retry_after_ms: LONG_POLLS_RETRY_AFTER_MS })?)
        };
        let mut remote = self.deps.streams.remote_changes();
        let mut closing = self.closing.subscribe();
        let answer = loop {
            if let Some(remote) = remote.as_mut() {
                remote.mark_unchanged();
            }
            let answer = self.pass(user, &wanted, &conn).await?;
            let Some(interest) =
                interest.as_mut().filter(|_| !answer.has_news && Instant::now() < deadline && !*closing.borrow())
            else {
                break answer;
            };
            interest.follow_rooms(&answer.rooms.joined);
            let wake_at = answer.next_typing_expiry.map_or(deadline, |expiry| expiry.min(deadline));
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
                        break answer;
                    }
                }
                _ = closing.wait_for(|closing| *closing) => break answer,
            }
        };
        self.finish(&conn, answer, txn_id).await
    }

    /// Records the answer as the connection's next position.
    async fn finish(&self, conn: &Connection, answer: Answer, txn_id: Option<String>) -> Result<JsonValue, Error> {
        let mut sent = Vec::with_capacity(answer.changed.len());
        let records = if answer.changed.is_empty() {
            Arc::clone(&conn.records)
        } else {
            let mut records = (*conn.records).clone();
            for (room_id, record) in answer.changed {
                let json = serde_json::to_string(&record).map_err(|e| Error::Internal(format!("sliding sync record: {e}")))?;
                sent.push(SentRoom { room_id: room_id.clone(), record: json });
                records.insert(room_id, record);
            }
            Arc::new(records)
        };
        let now = self.deps.clock.now_ms();
        let token = answer.cut.to_string();
        let pos = self.deps.store.record_sliding_answer(conn.key, conn.base_pos, &token, &sent, now).await?;
        self.cache.lock().expect("sliding sync cache").insert(conn.key, (pos, records));
        let mut body = answer.body;
        body["pos"] = json!(format!("{}_{pos}", conn.key));
        if let Some(txn_id) = txn_id {
            body["txn_id"] = json!(txn_id);
        }
        Ok(body)
    }

    /// The connection at the client's `pos`.
    async fn connection(&self, owner: ConnectionOwner<'_>, pos: &str) -> Result<Connection, Error> {
        let (key, at) = parse_pos(pos)?;
        let cached = self.cache.lock().expect("sliding sync cache").get(&key).filter(|(p, _)| *p == at).map(|(_, r)| r.clone());
        // The owner is checked by the store either way: a position is
        // never served to another user or device.
        let position = self.deps.store.sliding_position(owner, key, at, cached.is_none()).await?;
        let records = match cached {
            Some(records) => records,
            None => {
                let mut records = BTreeMap::new();
                for stored in &position.rooms {
                    records.insert(stored.room_id.clone(), record_of(stored)?);
                }
                Arc::new(records)
            }
        };
        let since = StreamToken::parse(&position.token).map_err(|_| Error::UnknownPos)?;
        Ok(Connection { key, base_pos: at, since: Some(since), records })
    }

    /// One pass: the cut, the lists, the rooms to send, the extensions.
    async fn pass(&self, user: &AuthedUser, wanted: &Wanted, conn: &Connection) -> Result<Answer, Error> {
        let user_id = user.user_id.as_str();
        let positions = self.deps.streams.stream_positions().await?;
        let mut cut = StreamToken {
            events: positions.events,
            account_data: positions.account_data,
            receipts: positions.receipts,
            typing: 0,
            presence: 0,
            to_device: positions.to_device,
            device_lists: positions.device_lists,
            thread_subscriptions: positions.thread_subscriptions,
        };
        // A connection without lists or subscriptions (Element X's
        // encryption sync) reads no rooms at all, but still waits on the
        // user's joined rooms: a device-list change of a room's member
        // wakes the syncs of that room.
        let wants_rooms = !wanted.lists.is_empty() || !wanted.subscriptions.is_empty();
        let list = async {
            Ok::<_, Error>(self.room_lists.at(self.deps.store.as_ref(), user_id, cut.events, self.deps.clock.now_ms()).await?)
        };
        let (list, direct, forgotten) = if wants_rooms {
            tokio::try_join!(
                list,
                // `m.direct`, for `is_dm`.
                self.deps.account_data.direct_rooms(user_id),
                async { Ok::<_, Error>(self.deps.forgotten.forgotten_rooms(user_id).await?) },
            )?
        } else {
            (list.await?, BTreeSet::new(), Vec::new())
        };
        let forgotten: BTreeSet<String> = forgotten.into_iter().collect();
        // What the answer covers: rooms joined up to the cut.
        let entries: Vec<&RoomListEntry> = if wants_rooms { list.entries.as_slice() } else { &[] }
            .iter()
            .map(|e| &**e)
            .filter(|e| e.membership_pos <= cut.events && !forgotten.contains(&e.room_id))
            .filter(|e| decide::listed(e, conn.records.contains_key(&e.room_id)))
            .collect();

        // Lists: sort once, filter per list, cut the ranges.
        let mut sorted = entries.clone();
        decide::sort_by_recency(&mut sorted);
        let mut lists = Map::new();
        let mut selected: BTreeMap<&str, (RoomConfig, Vec<&str>, &RoomListEntry)> = BTreeMap::new();
        for (name, list) in &wanted.lists {
            let matching: Vec<&RoomListEntry> = sorted
                .iter()
                .copied()
                .filter(|e| decide::passes(list.filters.as_ref(), e, direct.contains(&e.room_id)))
                .collect();
            lists.insert(name.clone(), json!({ "count": matching.len() }));
            for index in decide::in_ranges(&list.ranges, matching.len()) {
                let entry = matching[index];
                let slot = selected.entry(entry.room_id.as_str()).or_insert_with(|| (RoomConfig::default(), Vec::new(), entry));
                slot.0.combine(&list.config);
                slot.1.push(name.as_str());
            }
        }
        let by_id: HashMap<&str, &RoomListEntry> = entries.iter().map(|e| (e.room_id.as_str(), *e)).collect();
        for (room_id, config) in &wanted.subscriptions {
            // Rooms the user has no membership in are ignored (MSC4186).
            if let Some(entry) = by_id.get(room_id.as_str()) {
                let slot = selected.entry(entry.room_id.as_str()).or_insert_with(|| (RoomConfig::default(), Vec::new(), entry));
                slot.0.combine(config);
            }
        }

        // Which selected rooms go, and how; the newest first when capped.
        let in_view: BTreeSet<&str> = selected.keys().copied().collect();
        // Each room in view, the lists whose ranges hold it and whether it
        // is subscribed: what the extensions' `lists` and `rooms` pick from.
        let view_of: Vec<decide::InView> = selected
            .iter()
            .map(|(room_id, (_, in_lists, _))| decide::InView {
                room_id,
                lists: in_lists.clone(),
                subscribed: wanted.subscriptions.contains_key(*room_id),
            })
            .collect();
        let mut updates: Vec<(&RoomListEntry, RoomConfig, Vec<&str>, RoomUpdate)> = Vec::new();
        for (config, in_lists, entry) in selected.into_values() {
            let last_pos = if entry.membership == MembershipState::Join {
                entry.last_pos.min(cut.events)
            } else {
                // Stripped state, or a room left: as of the membership.
                entry.membership_pos
            };
            let facts = decide::RoomFacts {
                record: conn.records.get(&entry.room_id),
                membership: &entry.membership,
                last_pos,
                config: &config,
            };
            match decide::room_update(facts) {
                RoomUpdate::Skip => {}
                update => updates.push((entry, config, in_lists, update)),
            }
        }
        // Subscribed rooms (the one the user has open) first, then the
        // newest, when the answer is capped.
        updates.sort_by_key(|(entry, ..)| {
            (!wanted.subscriptions.contains_key(&entry.room_id), std::cmp::Reverse(decide::bump_stamp(entry)))
        });
        let more_rooms = updates.len() > MAX_SLIDING_ROOMS_PER_ANSWER;
        updates.truncate(MAX_SLIDING_ROOMS_PER_ANSWER);
        let initial_rooms: BTreeSet<&str> =
            updates.iter().filter(|u| u.3 == RoomUpdate::Initial).map(|u| u.0.room_id.as_str()).collect();

        let ignored = self.deps.account_data.ignored_users(user_id).await?;
        let ctx = Arc::new(room::Context { user: user.clone(), since: conn.since, cut, ignored, direct: direct.clone() });
        // Each room on a task of its own, a few at a time: the rooms of a
        // window are read side by side on the runtime's threads (SQLite
        // reads run on the task that asks), and an answer of 200 rooms
        // does not take the whole connection pool.
        // Owned first: a lazy iterator over `updates` borrowed inside the
        // stream makes the handler's future fail to be `Send` for any
        // lifetime (rustc's "not general enough").
        let jobs: Vec<(RoomListEntry, RoomConfig, Vec<String>, RoomUpdate)> = updates
            .iter()
            .map(|(entry, config, in_lists, update)| {
                ((*entry).clone(), config.clone(), in_lists.iter().map(|l| (*l).to_owned()).collect(), *update)
            })
            .collect();
        let jobs = jobs.into_iter().map(|(entry, config, in_lists, update)| {
            let (deps, ctx) = (Arc::clone(&self.deps), Arc::clone(&ctx));
            tokio::spawn(async move { deps.room(&ctx, &entry, &config, &in_lists, update).await })
        });
        let built: Vec<(Option<JsonValue>, RoomRecord)> = futures_util::stream::iter(jobs)
            .buffered(ROOMS_BUILT_AT_ONCE)
            .map(|joined| joined.map_err(|e| Error::Internal(format!("building a sliding-sync room: {e}")))?)
            .try_collect()
            .await?;
        let mut rooms = Map::new();
        let mut changed = Vec::new();
        for ((entry, ..), (body, record)) in updates.iter().zip(built) {
            if let Some(body) = body {
                rooms.insert(entry.room_id.clone(), body);
            }
            changed.push((entry.room_id.clone(), record));
        }

        // Rooms in view whose unread counts moved (a read receipt of the
        // user's other device) without news of their own.
        let unsent: Vec<&str> = in_view.iter().copied().filter(|r| !rooms.contains_key(*r)).collect();
        for (room_id, record) in self.recounted(user, conn, cut, &unsent).await? {
            rooms.insert(room_id.clone(), json!({ "notification_count": record.counts.0, "highlight_count": record.counts.1 }));
            changed.push((room_id, record));
        }

        let ext = self.extensions(user, &wanted.extensions, conn.since, &mut cut, &list.joined, &view_of, &initial_rooms).await?;
        // A membership of the user's that changed since the client's
        // token may have changed a list's `count` alone (a room left or
        // joined outside every range): that is news too.
        let memberships_moved = conn
            .since
            .is_some_and(|since| list.entries.iter().any(|e| e.membership_pos > since.events && e.membership_pos <= cut.events));
        let has_news = more_rooms || !rooms.is_empty() || ext.has_news || (wants_rooms && memberships_moved);
        // Moved in, not through `json!`, which would copy every room.
        let body = object([("lists", JsonValue::Object(lists)), ("rooms", JsonValue::Object(rooms)), ("extensions", ext.body)]);
        Ok(Answer { body, has_news, changed, cut, rooms: list, next_typing_expiry: ext.next_typing_expiry })
    }

    /// The rooms among `unsent` (in view, not in the answer) the client
    /// holds as joined whose unread counts changed since: only looked at
    /// when receipts moved, and only for the rooms that have new ones.
    async fn recounted(
        &self,
        user: &AuthedUser,
        conn: &Connection,
        cut: StreamToken,
        unsent: &[&str],
    ) -> Result<Vec<(String, RoomRecord)>, Error> {
        let Some(since) = conn.since.filter(|s| s.receipts < cut.receipts && !unsent.is_empty()) else { return Ok(Vec::new()) };
        let receipted = self
            .deps
            .streams
            .rooms_changed((cut.events, cut.events), (since.receipts, cut.receipts), MAX_SLIDING_ROOMS_PER_ANSWER)
            .await?;
        let mut out = Vec::new();
        for room_id in unsent {
            // Too many rooms with receipts to list: every room in view is
            // looked at.
            if receipted.as_ref().is_some_and(|r| !r.iter().any(|x| x == room_id)) {
                continue;
            }
            let Some(record) = conn.records.get(*room_id).filter(|r| r.membership == "join") else { continue };
            let counts = self.deps.push.unread_counts(&user.user_id, room_id).await?;
            let counts = (counts["notification_count"].as_u64().unwrap_or(0), counts["highlight_count"].as_u64().unwrap_or(0));
            if counts != record.counts {
                out.push(((*room_id).to_owned(), RoomRecord { counts, ..record.clone() }));
            }
        }
        Ok(out)
    }
}
