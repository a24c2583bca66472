//! A room's history from before this server joined it (server-server API
//! "Backfilling"): when `/messages` pages past the first event this server
//! holds of a room it joined through another server, the history is
//! fetched with `GET /backfill` from servers in the room, checked
//! (format, signatures, content hash) and kept apart from the events
//! stream ([`RoomHistoryStore`]): it never changes the room's state, never
//! reaches `/sync`, and is shown only by `/messages`.
//!
//! Who sees it: an event is shown when the history visibility that
//! governs it (the newest `m.room.history_visibility` older than it) is
//! `world_readable`, or `shared` and the reader is joined now. Until the
//! walk has reached an older visibility event, the room's current one
//! governs the events newer than it; events older than every known one
//! stay hidden until the walk reaches the room's start, where the spec's
//! default (`shared`) applies. `joined` and `invited` history is not
//! shown (this server cannot tell who was a member then).
//!
//! Not done: the auth rules are not checked on history (it never enters
//! state; signatures and hashes are), and forks are ordered by depth only.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chancery_core::pdu::Pdu;
use chancery_proto::limits::{
    HISTORY_FETCH_TIMEOUT_MS, MAX_FEDERATION_PAGE, MAX_HISTORY_EVENTS_PER_ROOM, MAX_HISTORY_FETCH_ROUNDS, MAX_HISTORY_SERVERS,
};
use chancery_proto::ruma::api::federation::backfill::get_backfill;
use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{EventId, OwnedEventId, OwnedServerName, RoomId, ServerName, UInt, UserId};
use chancery_store::{BackfilledEvent, HistoryEvent, RoomHistoryStore, RoomStore, StoredEvent, history_visibility_of};
use tokio::sync::Mutex;

use super::Federation;
use crate::Error;

/// What [`RoomHistory`] is built from.
pub struct RoomHistoryDeps {
    pub federation: Arc<Federation>,
    pub rooms: Arc<dyn RoomStore>,
    pub history: Arc<dyn RoomHistoryStore>,
}

/// A page of a room's history, oldest-ward.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// The events the reader may see, newest first, as stored events
    /// without a stream position.
    pub events: Vec<StoredEvent>,
    /// The ordinal the next page starts after (`None`: the history ends
    /// here as far as this server can tell).
    pub next: Option<u64>,
}

/// Locks that let one fetch per room run at a time (striped: bounded).
const FETCH_LOCKS: usize = 64;

/// Rooms' history before this server's join.
pub struct RoomHistory {
    deps: RoomHistoryDeps,
    locks: Vec<Mutex<()>>,
}

impl RoomHistory {
    pub fn new(deps: RoomHistoryDeps) -> Self {
        Self { deps, locks: (0..FETCH_LOCKS).map(|_| Mutex::new(())).collect() }
    }

    /// `join` was just sent through another server: the room's history
    /// starts at its `prev_events`.
    pub async fn open(&self, room_id: &RoomId, join: &Pdu) -> Result<(), Error> {
        let frontier: Vec<String> = join.prev_events.iter().take(MAX_FEDERATION_PAGE).map(|e| e.to_string()).collect();
        Ok(self.deps.history.open_history(room_id.as_str(), &frontier).await?)
    }

    /// Up to `limit` events after ordinal `after` (0: from the newest),
    /// fetched from other servers when what is stored runs short; none for
    /// a room without history here (created here). The caller has checked
    /// that `viewer` may read the room.
    pub async fn page(&self, viewer: &UserId, room_id: &RoomId, after: u64, limit: usize) -> Result<HistoryPage, Error> {
        let store = &self.deps.history;
        let status = store.history_status(room_id.as_str()).await?;
        if !status.opened {
            return Ok(HistoryPage::default());
        }
        let mut rows = store.history_page(room_id.as_str(), after, limit).await?;
        let mut status = status;
        let mut rounds = 0;
        while rows.len() < limit && rounds < MAX_HISTORY_FETCH_ROUNDS {
            rounds += 1;
            let fetch = self.fetch(room_id);
            match tokio::time::timeout(Duration::from_millis(HISTORY_FETCH_TIMEOUT_MS), fetch).await {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => rows = store.history_page(room_id.as_str(), after, limit).await?,
                Ok(Err(e)) => {
                    tracing::info!(room_id = %room_id, error = %e, "fetching a room's history failed");
                    break;
                }
                Err(_) => {
                    tracing::info!(room_id = %room_id, "fetching a room's history timed out");
                    break;
                }
            }
        }
        // Fetching moved the frontier: read it again only then.
        if rounds > 0 {
            status = store.history_status(room_id.as_str()).await?;
        }
        let next = match rows.last() {
            Some(last) if rows.len() == limit || status.frontier > 0 => Some(last.ordinal),
            Some(_) => None,
            // Nothing new now; another page may bring more once a server answers.
            None => None,
        };
        let events = self.visible(viewer, room_id, rows, status.frontier == 0).await?;
        Ok(HistoryPage { events, next })
    }

    /// Fetches the next events of the walk back (a full federation page,
    /// whatever the reader's page size: fewer round trips) from a server in
    /// the room; returns how many were stored (0: nothing new came).
    async fn fetch(&self, room_id: &RoomId) -> Result<usize, Error> {
        let mut hasher = DefaultHasher::new();
        room_id.hash(&mut hasher);
        let _one_at_a_time = self.locks[(hasher.finish() % FETCH_LOCKS as u64) as usize].lock().await;
        let store = &self.deps.history;
        let frontier = store.history_frontier(room_id.as_str(), MAX_FEDERATION_PAGE).await?;
        if frontier.is_empty() {
            return Ok(0);
        }
        let Some(room) = self.deps.rooms.room(room_id.as_str()).await? else { return Ok(0) };
        let ids: Vec<OwnedEventId> = frontier.iter().filter_map(|id| EventId::parse(id).ok()).collect();
        let limit = UInt::try_from(MAX_FEDERATION_PAGE).unwrap_or(UInt::MIN);
        let mut last_error = None;
        for server in self.servers_in_room(room_id).await? {
            let request = get_backfill::v1::Request::new(room_id.to_owned(), ids.clone(), limit);
            let answer = match self.deps.federation.send(&server, request).await {
                Ok(answer) => answer,
                Err(e) => {
                    last_error = Some(Error::from(e));
                    continue;
                }
            };
            let mut events = Vec::new();
            for raw in answer.pdus.iter().take(MAX_FEDERATION_PAGE) {
                match self.deps.federation.check_pdu(&room.room_version, raw).await {
                    Ok(pdu) if pdu.room_id_or_derived().is_ok_and(|r| r == room_id) => events.push(backfilled(&pdu)),
                    Ok(_) => tracing::debug!(server = %server, "a backfilled event belongs to another room"),
                    Err(e) => tracing::debug!(server = %server, error = %e, "a backfilled event failed its checks"),
                }
            }
            // Newest first, so ordinals grow back in time.
            events.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| b.event_id.cmp(&a.event_id)));
            return Ok(store.add_history(room_id.as_str(), &frontier, &events, MAX_HISTORY_EVENTS_PER_ROOM).await?);
        }
        Err(last_error.unwrap_or_else(|| Error::NotFound("no other server is in the room to fetch its history from".into())))
    }

    /// Servers of the room's joined members other than this one, the
    /// room id's server first, then by how many members they have.
    async fn servers_in_room(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>, Error> {
        let ours = self.deps.federation.server_name();
        let mut counts: BTreeMap<OwnedServerName, usize> = BTreeMap::new();
        for member in self.deps.rooms.members_of_room(room_id.as_str()).await? {
            if member.membership != MembershipState::Join {
                continue;
            }
            if let Ok(user) = UserId::parse(&member.user_id)
                && user.server_name() != ours
            {
                *counts.entry(user.server_name().to_owned()).or_default() += 1;
            }
        }
        let first: Option<&ServerName> = room_id.server_name().filter(|s| counts.contains_key(*s));
        let mut servers: Vec<(OwnedServerName, usize)> = counts.into_iter().collect();
        servers.sort_by_key(|(s, n)| (Some(s.as_ref()) != first, std::cmp::Reverse(*n)));
        Ok(servers.into_iter().map(|(s, _)| s).take(MAX_HISTORY_SERVERS).collect())
    }

    /// The rows `viewer` may see (module doc), as stored events.
    async fn visible(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        rows: Vec<HistoryEvent>,
        walk_done: bool,
    ) -> Result<Vec<StoredEvent>, Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rooms = &self.deps.rooms;
        let joined = rooms
            .state_event(room_id.as_str(), "m.room.member", viewer.as_str(), None)
            .await?
            .is_some_and(|m| m.membership == Some(MembershipState::Join));
        let current = rooms.state_event(room_id.as_str(), "m.room.history_visibility", "", None).await?;
        let changes = self
            .deps
            .history
            .history_of_type(room_id.as_str(), "m.room.history_visibility", MAX_HISTORY_VISIBILITY_CHANGES)
            .await?;
        let mut shown = Vec::with_capacity(rows.len());
        for row in rows {
            let governing = match changes.iter().find(|h| h.ordinal > row.ordinal) {
                Some(older) => Some(history_visibility_of(&older.json).unwrap_or(HistoryVisibility::Shared)),
                None if walk_done => Some(HistoryVisibility::Shared),
                None => current
                    .as_ref()
                    .filter(|c| c.depth < row.depth)
                    .map(|c| history_visibility_of(&c.json).unwrap_or(HistoryVisibility::Shared)),
            };
            let visible = match governing {
                Some(HistoryVisibility::WorldReadable) => true,
                Some(HistoryVisibility::Shared) => joined,
                _ => false,
            };
            if visible {
                shown.push(stored_event(room_id, row));
            }
        }
        Ok(shown)
    }
}

/// Visibility events of a room's history looked at (past them, the
/// oldest events stay hidden).
const MAX_HISTORY_VISIBILITY_CHANGES: usize = 1_000;

fn backfilled(pdu: &Pdu) -> BackfilledEvent {
    BackfilledEvent {
        event_id: pdu.event_id.to_string(),
        event_type: pdu.event_type.to_string(),
        state_key: pdu.state_key.clone(),
        sender: pdu.sender.to_string(),
        origin_server_ts: pdu.origin_server_ts.get().into(),
        depth: pdu.depth.into(),
        json: pdu.json.clone(),
        prev_events: pdu.prev_events.iter().take(MAX_FEDERATION_PAGE).map(|e| e.to_string()).collect(),
    }
}

fn stored_event(room_id: &RoomId, row: HistoryEvent) -> StoredEvent {
    let membership = (row.event_type == "m.room.member")
        .then(|| {
            serde_json::from_str::<serde_json::Value>(&row.json)
                .ok()
                .and_then(|v| v["content"]["membership"].as_str().map(MembershipState::from))
        })
        .flatten();
    StoredEvent {
        event_id: row.event_id,
        room_id: room_id.to_string(),
        event_type: row.event_type,
        state_key: row.state_key,
        sender: row.sender,
        origin_server_ts: row.origin_server_ts,
        depth: row.depth,
        json: row.json,
        membership,
        // History has no place in the stream.
        stream_pos: 0,
        redacted_by: None,
        txn: None,
    }
}
