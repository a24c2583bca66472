//! This server's users' EDUs for the other servers (server-server API
//! "Typing Notifications", "Receipts", "Send-to-device messaging",
//! "Device Management", "m.signing_key_update").
//!
//! Two kinds, two paths:
//! - EDUs that must arrive (to-device messages, device-list and
//!   cross-signing updates) are committed to the persisted per-destination
//!   outbox of the federation sender (`sender.rs`,
//!   [`FederationSender::queue_edus`]) before the method here returns;
//!   the sender delivers them with the destination's events, retries them
//!   with its backoff and after a restart, and drops them from the outbox
//!   only after the destination's 200. Per (sender, destination) they go
//!   in the order queued, so to-device messages keep their order.
//! - Typing, read receipts and presence are ephemeral: each change goes at once in a
//!   transaction of its own, best effort, at most
//!   [`MAX_CONCURRENT_EDU_SENDS`] at a time (past it a change is dropped),
//!   not retried and not persisted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chancery_proto::limits::MAX_CONCURRENT_EDU_SENDS;
use chancery_proto::ruma::api::federation::transactions::send_transaction_message;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedServerName, OwnedTransactionId, OwnedUserId, RoomId, ServerName, UInt, UserId,
};
use chancery_store::RoomStore;
use serde_json::{Value as JsonValue, json};
use tokio::sync::Semaphore;

use super::Federation;
use super::sender::FederationSender;
use crate::Error;
use crate::clock::Clock;

/// Sends this server's users' EDUs to the other servers: typing and
/// receipts at once, the others through the sender's outbox.
pub struct EduSender {
    federation: Arc<Federation>,
    rooms: Arc<dyn RoomStore>,
    clock: Arc<dyn Clock>,
    /// The persisted outbox of the EDUs that must arrive.
    outbox: Arc<FederationSender>,
    in_flight: Arc<Semaphore>,
    /// Transaction ids `edu.<start ms>.<n>`: unique while the clock does
    /// not go back between runs.
    started_ms: u64,
    next: AtomicU64,
}

impl EduSender {
    pub fn new(
        federation: Arc<Federation>,
        rooms: Arc<dyn RoomStore>,
        clock: Arc<dyn Clock>,
        outbox: Arc<FederationSender>,
    ) -> Self {
        let started_ms = clock.now_ms();
        Self {
            federation,
            rooms,
            clock,
            outbox,
            in_flight: Arc::new(Semaphore::new(MAX_CONCURRENT_EDU_SENDS)),
            started_ms,
            next: AtomicU64::new(0),
        }
    }

    /// `user` started (`typing`) or stopped typing in `room_id`.
    pub fn typing(&self, room_id: &RoomId, user_id: &UserId, typing: bool) {
        let edu = json!({"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": user_id, "typing": typing}});
        self.send_now(Audience::Room(room_id.to_owned()), edu);
    }

    /// `user` read up to `event_id` in `room_id` (a public receipt).
    pub fn receipt(&self, room_id: &RoomId, user_id: &UserId, event_id: &str, thread_id: Option<&str>) {
        let mut data = json!({"ts": self.clock.now_ms()});
        if let Some(thread) = thread_id {
            data["thread_id"] = json!(thread);
        }
        let content = json!({ room_id.as_str(): {"m.read": { user_id.as_str(): {"data": data, "event_ids": [event_id]}}}});
        self.send_now(Audience::Room(room_id.to_owned()), json!({"edu_type": "m.receipt", "content": content}));
    }

    /// `user`'s presence changed (`content`: `presence`, `status_msg`,
    /// `last_active_ago`, `currently_active`): an `m.presence` for the
    /// servers sharing a joined room with them, best effort like typing.
    pub fn presence(&self, user_id: &UserId, mut content: JsonValue) {
        content["user_id"] = json!(user_id);
        let edu = json!({"edu_type": "m.presence", "content": {"push": [content]}});
        self.send_now(Audience::RoomsOf(user_id.to_owned()), edu);
    }

    pub fn server_name(&self) -> &ServerName {
        self.federation.server_name()
    }

    /// `user`'s devices or device keys changed: an `m.device_list_update`
    /// for the servers sharing one of `rooms` with them (they ask for the
    /// devices again), committed to the outbox when this returns.
    pub async fn device_list_update(&self, user_id: &UserId, rooms: &[String]) -> Result<(), Error> {
        let edu = json!({"edu_type": "m.device_list_update", "content": {
            "user_id": user_id, "device_id": "", "stream_id": self.clock.now_ms(), "prev_id": [], "deleted": false,
        }});
        self.queue_for_rooms(rooms, edu).await
    }

    /// `user`'s master or self-signing key changed (spec server-server
    /// "m.signing_key_update"): the new keys for the servers sharing one
    /// of `rooms` with them, committed to the outbox when this returns.
    pub async fn signing_key_update(
        &self,
        user_id: &UserId,
        master_key: Option<JsonValue>,
        self_signing_key: Option<JsonValue>,
        rooms: &[String],
    ) -> Result<(), Error> {
        let mut content = json!({"user_id": user_id});
        if let Some(key) = master_key {
            content["master_key"] = key;
        }
        if let Some(key) = self_signing_key {
            content["self_signing_key"] = key;
        }
        self.queue_for_rooms(rooms, json!({"edu_type": "m.signing_key_update", "content": content})).await
    }

    /// To-device messages for users of other servers: one
    /// `m.direct_to_device` EDU per server (`messages`: user → device or
    /// `*` → content), all committed to the outbox in one transaction
    /// when this returns. The receiver drops a repeat of (`sender`'s
    /// server, `message_id`).
    pub async fn to_device(
        &self,
        sender: &UserId,
        event_type: &str,
        message_id: &str,
        by_server: Vec<(OwnedServerName, JsonValue)>,
    ) -> Result<(), Error> {
        if !self.federation.enabled() {
            return Ok(());
        }
        let edus: Vec<(OwnedServerName, JsonValue)> = by_server
            .into_iter()
            .map(|(server, messages)| {
                let edu = json!({"edu_type": "m.direct_to_device", "content": {
                    "sender": sender, "type": event_type, "message_id": message_id, "messages": messages,
                }});
                (server, edu)
            })
            .collect();
        Ok(self.outbox.queue_edus(&edus).await?)
    }

    /// Queues `edu` for the other servers with a joined user in `rooms`.
    async fn queue_for_rooms(&self, rooms: &[String], edu: JsonValue) -> Result<(), Error> {
        if !self.federation.enabled() {
            return Ok(());
        }
        let mut servers = BTreeSet::new();
        for room_id in rooms.iter().take(MAX_EDU_ROOMS) {
            let Ok(room_id) = RoomId::parse(room_id) else { continue };
            servers.extend(servers_in_room(&*self.rooms, &room_id, self.federation.server_name()).await?);
        }
        let edus: Vec<(OwnedServerName, JsonValue)> = servers.into_iter().map(|server| (server, edu.clone())).collect();
        Ok(self.outbox.queue_edus(&edus).await?)
    }

    /// Typing, receipts and presence: at once, one transaction per
    /// server, best effort.
    fn send_now(&self, audience: Audience, edu: JsonValue) {
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
            let servers = match audience.servers(&*rooms, federation.server_name()).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(error = %e, "the servers of an EDU could not be read");
                    return;
                }
            };
            let Ok(raw) = serde_json::value::to_raw_value(&edu) else { return };
            let raw = Raw::from_json(raw);
            let ts = MilliSecondsSinceUnixEpoch(UInt::new(now).unwrap_or_default());
            let sends = servers.into_iter().map(|server| {
                let mut request =
                    send_transaction_message::v1::Request::new(txn_id.clone(), federation.server_name().to_owned(), ts);
                request.edus = vec![raw.clone()];
                let federation = federation.clone();
                async move {
                    if let Err(e) = federation.send(&server, request).await {
                        tracing::debug!(server = %server, error = %e, "an ephemeral EDU did not reach its server");
                    }
                }
            });
            futures_util::future::join_all(sends).await;
        });
    }
}

/// Whom an ephemeral EDU goes to.
enum Audience {
    /// The other servers with a joined user in the room.
    Room(OwnedRoomId),
    /// The other servers sharing a joined room with the user.
    RoomsOf(OwnedUserId),
}

impl Audience {
    async fn servers(
        &self,
        rooms: &dyn RoomStore,
        us: &ServerName,
    ) -> Result<BTreeSet<OwnedServerName>, chancery_store::StoreError> {
        match self {
            Audience::Room(room_id) => servers_in_room(rooms, room_id, us).await,
            Audience::RoomsOf(user_id) => {
                let mut servers = BTreeSet::new();
                let memberships = rooms.memberships_of_user(user_id.as_str()).await?;
                let joined = memberships.iter().filter(|m| m.membership == MembershipState::Join);
                for membership in joined.take(MAX_EDU_ROOMS) {
                    let Ok(room_id) = RoomId::parse(&membership.room_id) else { continue };
                    servers.extend(servers_in_room(rooms, &room_id, us).await?);
                }
                Ok(servers)
            }
        }
    }
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
