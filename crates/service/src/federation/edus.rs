//! Typing and read receipts of this server's users, sent to the other
//! servers in the room as EDUs (server-server API "Typing
//! Notifications", "Receipts"). Best effort: each change goes at once in a
//! transaction of its own, at most [`MAX_CONCURRENT_EDU_SENDS`] at a time
//! (past it a change is dropped). Device-list changes and to-device
//! messages are tried again with a growing delay for about 15 minutes;
//! typing and receipts are not. EDUs are not persisted, unlike PDUs
//! (`sender.rs`): a restart loses those still waiting.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chancery_proto::limits::MAX_CONCURRENT_EDU_SENDS;
use chancery_proto::ruma::api::federation::transactions::send_transaction_message;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, RoomId, ServerName, UInt, UserId};
use chancery_store::RoomStore;
use serde_json::{Value as JsonValue, json};
use tokio::sync::Semaphore;

use super::Federation;
use crate::clock::Clock;

/// Sends this server's users' typing and receipts to the other servers of
/// their rooms.
pub struct EduSender {
    federation: Arc<Federation>,
    rooms: Arc<dyn RoomStore>,
    clock: Arc<dyn Clock>,
    in_flight: Arc<Semaphore>,
    /// EDUs being tried again (past it, one that failed is given up).
    retry_slots: Arc<Semaphore>,
    /// Transaction ids `edu.<start ms>.<n>`: unique while the clock does
    /// not go back between runs.
    started_ms: u64,
    next: AtomicU64,
}

impl EduSender {
    pub fn new(federation: Arc<Federation>, rooms: Arc<dyn RoomStore>, clock: Arc<dyn Clock>) -> Self {
        let started_ms = clock.now_ms();
        Self {
            federation,
            rooms,
            clock,
            in_flight: Arc::new(Semaphore::new(MAX_CONCURRENT_EDU_SENDS)),
            retry_slots: Arc::new(Semaphore::new(MAX_EDU_RETRIES_IN_FLIGHT)),
            started_ms,
            next: AtomicU64::new(0),
        }
    }

    /// `user` started (`typing`) or stopped typing in `room_id`.
    pub fn typing(&self, room_id: &RoomId, user_id: &UserId, typing: bool) {
        let edu = json!({"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": user_id, "typing": typing}});
        self.send(room_id, edu);
    }

    /// `user` read up to `event_id` in `room_id` (a public receipt).
    pub fn receipt(&self, room_id: &RoomId, user_id: &UserId, event_id: &str, thread_id: Option<&str>) {
        let mut data = json!({"ts": self.clock.now_ms()});
        if let Some(thread) = thread_id {
            data["thread_id"] = json!(thread);
        }
        let content = json!({ room_id.as_str(): {"m.read": { user_id.as_str(): {"data": data, "event_ids": [event_id]}}}});
        self.send(room_id, json!({"edu_type": "m.receipt", "content": content}));
    }

    pub fn server_name(&self) -> &ServerName {
        self.federation.server_name()
    }

    /// `user`'s devices or keys changed: the servers sharing one of
    /// `rooms` with them hear of it (they ask again when their users need
    /// the keys).
    pub fn device_list_update(&self, user_id: &UserId, rooms: Vec<String>) {
        let edu = json!({"edu_type": "m.device_list_update", "content": {
            "user_id": user_id, "device_id": "", "stream_id": self.clock.now_ms(), "prev_id": [], "deleted": false,
        }});
        self.spawn_send(Targets::Rooms(rooms), edu);
    }

    /// To-device messages for users of `server`: one `m.direct_to_device`
    /// EDU (`messages`: user → device or `*` → content).
    pub fn to_device(&self, server: OwnedServerName, sender: &UserId, event_type: &str, message_id: &str, messages: JsonValue) {
        let edu = json!({"edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": event_type, "message_id": message_id, "messages": messages,
        }});
        self.spawn_send(Targets::Server(server), edu);
    }

    fn send(&self, room_id: &RoomId, edu: JsonValue) {
        self.spawn_send(Targets::Rooms(vec![room_id.to_string()]), edu);
    }

    fn spawn_send(&self, targets: Targets, edu: JsonValue) {
        // Typing and receipts are soon stale; device-list changes and
        // to-device messages (room keys) must arrive.
        let retries = match edu["edu_type"].as_str() {
            Some("m.direct_to_device" | "m.device_list_update") => EDU_RETRIES,
            _ => 0,
        };
        if !self.federation.enabled() {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!("too many EDUs in flight; one dropped");
            return;
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let txn_id = OwnedTransactionId::from(format!("edu.{}.{n}", self.started_ms));
        let (federation, rooms, retry_slots) = (self.federation.clone(), self.rooms.clone(), self.retry_slots.clone());
        let now = self.clock.now_ms();
        tokio::spawn(async move {
            let _permit = permit;
            let servers = match targets {
                Targets::Server(server) => BTreeSet::from([server]),
                Targets::Rooms(room_ids) => {
                    let mut servers = BTreeSet::new();
                    for room_id in room_ids.iter().take(MAX_EDU_ROOMS) {
                        let Ok(room_id) = RoomId::parse(room_id) else { continue };
                        match servers_in_room(&*rooms, &room_id, federation.server_name()).await {
                            Ok(found) => servers.extend(found),
                            Err(e) => tracing::debug!(room_id = %room_id, error = %e, "a room's servers could not be read"),
                        }
                    }
                    servers
                }
            };
            let Ok(raw) = serde_json::value::to_raw_value(&edu) else { return };
            let raw = Raw::from_json(raw);
            let ts = MilliSecondsSinceUnixEpoch(UInt::new(now).unwrap_or_default());
            let sends = servers.into_iter().map(|server| {
                let (federation, raw, txn_id, retry_slots) =
                    (federation.clone(), raw.clone(), txn_id.clone(), retry_slots.clone());
                async move {
                    let attempt = move |federation: Arc<Federation>, server: OwnedServerName| {
                        let mut request =
                            send_transaction_message::v1::Request::new(txn_id.clone(), federation.server_name().to_owned(), ts);
                        request.edus = vec![raw.clone()];
                        async move { federation.send(&server, request).await }
                    };
                    let Err(e) = attempt(federation.clone(), server.clone()).await else { return };
                    // Those that must arrive are tried again, a second
                    // later, then twice as late each time, within bounds
                    // and in a task of their own (same transaction id: the
                    // receiver drops a repeat).
                    let slot = (retries > 0).then(|| retry_slots.try_acquire_owned().ok()).flatten();
                    let Some(slot) = slot else {
                        tracing::debug!(server = %server, error = %e, "an EDU did not reach its server");
                        return;
                    };
                    tokio::spawn(async move {
                        let _slot = slot;
                        let mut delay_ms = EDU_RETRY_FIRST_MS;
                        for n in 1..=retries {
                            tokio::select! {
                                () = tokio::time::sleep(std::time::Duration::from_millis(delay_ms)) => {}
                                // A server talked to us: maybe it is this one, back.
                                () = federation.peer_came_back(&server) => {}
                            }
                            delay_ms = (delay_ms * 2).min(EDU_RETRY_MAX_MS);
                            match attempt(federation.clone(), server.clone()).await {
                                Ok(_) => return,
                                Err(e) if n == retries => {
                                    tracing::info!(server = %server, error = %e, "an EDU did not reach its server; given up");
                                }
                                Err(_) => {}
                            }
                        }
                    });
                }
            });
            futures_util::future::join_all(sends).await;
        });
    }
}

/// How often an EDU that must arrive is tried again, and the delays (1 s
/// doubling to 2 min: about 15 minutes in all). Past that, or after a
/// restart, it is lost (not persisted yet).
const EDU_RETRIES: u32 = 12;
const EDU_RETRY_FIRST_MS: u64 = 1_000;
const EDU_RETRY_MAX_MS: u64 = 120_000;
/// EDUs waiting to be tried again at once.
const MAX_EDU_RETRIES_IN_FLIGHT: usize = 1_024;

/// Where an EDU goes.
enum Targets {
    /// The other servers with a joined user in these rooms.
    Rooms(Vec<String>),
    Server(OwnedServerName),
}

/// Rooms whose servers one EDU is sent to (a user in more rooms reaches the
/// servers of these; the others learn of the change when they next ask).
const MAX_EDU_ROOMS: usize = 1_000;

/// The other servers with a joined user in the room.
async fn servers_in_room(
    rooms: &dyn RoomStore,
    room_id: &RoomId,
    us: &ServerName,
) -> Result<BTreeSet<OwnedServerName>, chancery_store::StoreError> {
    Ok(rooms
        .members_of_room(room_id.as_str())
        .await?
        .into_iter()
        .filter(|m| m.membership == MembershipState::Join)
        .filter_map(|m| UserId::parse(&m.user_id).ok().map(|u| u.server_name().to_owned()))
        .filter(|s| s != us)
        .collect())
}
