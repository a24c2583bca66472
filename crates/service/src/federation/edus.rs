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

    fn send(&self, room_id: &RoomId, edu: JsonValue) {
        if !self.federation.enabled() {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!(room_id = %room_id, "too many EDUs in flight; one dropped");
            return;
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let txn_id = OwnedTransactionId::from(format!("edu.{}.{n}", self.started_ms));
        let (federation, rooms, room_id) = (self.federation.clone(), self.rooms.clone(), room_id.to_owned());
        let now = self.clock.now_ms();
        tokio::spawn(async move {
            let _permit = permit;
            let servers = match servers_in_room(&*rooms, &room_id, federation.server_name()).await {
                Ok(servers) => servers,
                Err(e) => {
                    tracing::debug!(room_id = %room_id, error = %e, "the room's servers could not be read; an EDU was dropped");
                    return;
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
