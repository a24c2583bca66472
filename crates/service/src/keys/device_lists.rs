//! Telling waiting syncs that a user's devices or keys changed. The change
//! itself is stored (the device-list stream of `KeyStore`); this only
//! wakes the syncs on this node that may have to report it: the user's
//! own, and those waiting on a room the user is joined to. Other nodes
//! hear of the commit through the store (`remote_changes`).

use std::sync::Arc;

use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::RoomStore;

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

    /// `user_id`'s device list changed (and was committed).
    pub async fn changed(&self, user_id: &str) {
        self.notifier.user(user_id);
        // A failed read only delays the others' wake-up to their next
        // change or timeout; the change itself is stored.
        match self.rooms.memberships_of_user(user_id).await {
            Ok(memberships) => {
                let joined: Vec<&str> =
                    memberships.iter().filter(|m| m.membership == MembershipState::Join).map(|m| m.room_id.as_str()).collect();
                for room_id in &joined {
                    self.notifier.room(room_id);
                }
                if let Ok(user) = chancery_proto::ruma::UserId::parse(user_id)
                    && user.server_name() == self.edus.server_name()
                {
                    self.edus.device_list_update(&user, joined.iter().map(|r| r.to_string()).collect());
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read a user's rooms to wake their device-list watchers"),
        }
    }

    /// Messages were queued for these users' devices.
    pub fn to_device_queued<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        for user_id in user_ids {
            self.notifier.user(user_id);
        }
    }
}
