//! Typing and read receipts of this server's users, sent to the other
//! servers in the room as EDUs (server-server API "Typing
//! Notifications", "Receipts"). Best effort: each change goes at once in a
//! transaction of its own, at most [`MAX_CONCURRENT_EDU_SENDS`] at a time
//! (past it a change is dropped, as one to a server that is down is);
//! EDUs are not persisted or retried, unlike PDUs (`sender.rs`).

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
        if !self.federation.enabled() {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!("too many EDUs in flight; one dropped");
            return;
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let txn_id = OwnedTransactionId::from(format!("edu.{}.{n}", self.started_ms));
        let (federation, rooms) = (self.federation.clone(), self.rooms.clone());
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
            for server in servers {
                let mut request =
                    send_transaction_message::v1::Request::new(txn_id.clone(), federation.server_name().to_owned(), ts);
                request.edus = vec![raw.clone()];
                if let Err(e) = federation.send(&server, request).await {
                    tracing::debug!(server = %server, error = %e, "an EDU did not reach its server");
                }
            }
        });
    }
}

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
