//! Telling waiting syncs and other servers that a user's devices or keys
//! changed. The change itself is stored (the device-list stream of
//! `KeyStore`); this wakes the syncs on this node that may have to report
//! it (the user's own, and those waiting on a room the user is joined
//! to), and for a local user queues the EDU for the servers sharing a
//! room with them in the persisted federation outbox. Other nodes hear
//! of the commit through the store (`remote_changes`).

use std::sync::Arc;

use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{OwnedUserId, UserId};
use chancery_store::RoomStore;
use serde_json::Value as JsonValue;

use crate::federation::edus::EduSender;
use crate::notifier::Notifier;

/// Wakes the syncs a device-list change concerns. Handed to the
/// components that change device lists (`Accounts` deletes devices,
/// `Keys` uploads keys and signatures).
pub struct DeviceLists {
    rooms: Arc<dyn RoomStore>,
    notifier: Arc<Notifier>,
    /// Other servers sharing a room with a local user hear of the change.
    edus: Arc<EduSender>,
}

impl DeviceLists {
    pub fn new(rooms: Arc<dyn RoomStore>, notifier: Arc<Notifier>, edus: Arc<EduSender>) -> Self {
        Self { rooms, notifier, edus }
    }

    /// `user_id`'s device list changed (and was committed). For a local
    /// user, the servers sharing a room with them have an
    /// `m.device_list_update` in their outbox when this returns.
    pub async fn changed(&self, user_id: &str) {
        let Some((user, joined)) = self.wake(user_id).await else { return };
        if let Err(e) = self.edus.device_list_update(&user, &joined).await {
            tracing::warn!(error = %e, "a device-list change could not be queued for other servers");
        }
    }

    /// `user_id`'s cross-signing keys changed (and were committed): as
    /// [`Self::changed`], with an `m.signing_key_update` holding the new
    /// master and self-signing keys (`None`: unchanged; with neither,
    /// only the user-signing key changed, which other servers never see).
    pub async fn signing_keys_changed(&self, user_id: &str, master: Option<JsonValue>, self_signing: Option<JsonValue>) {
        let Some((user, joined)) = self.wake(user_id).await else { return };
        if master.is_none() && self_signing.is_none() {
            return;
        }
        if let Err(e) = self.edus.signing_key_update(&user, master, self_signing, &joined).await {
            tracing::warn!(error = %e, "a cross-signing key change could not be queued for other servers");
        }
    }

    /// Wakes the syncs concerned; for a local user, returns them and
    /// their joined rooms (whose servers hear of the change).
    async fn wake(&self, user_id: &str) -> Option<(OwnedUserId, Vec<String>)> {
        self.notifier.user(user_id);
        // A failed read only delays the others' wake-up to their next
        // change or timeout; the change itself is stored.
        match self.rooms.memberships_of_user(user_id).await {
            Ok(memberships) => {
                let joined: Vec<String> =
                    memberships.into_iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id).collect();
                for room_id in &joined {
                    self.notifier.room(room_id);
                }
                let user = UserId::parse(user_id).ok().filter(|u| u.server_name() == self.edus.server_name())?;
                Some((user, joined))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read a user's rooms to wake their device-list watchers");
                None
            }
        }
    }

    /// Messages were queued for these users' devices.
    pub fn to_device_queued<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        for user_id in user_ids {
            self.notifier.user(user_id);
        }
    }
}
