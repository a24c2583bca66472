//! Telling waiting syncs that a user's devices or keys changed. The change
//! itself is stored (the device-list stream of `KeyStore`); this only
//! wakes the syncs on this node that may have to report it: the user's
//! own, and those waiting on a room the user is joined to. Other nodes
//! hear of the commit through the store (`remote_changes`).

use std::sync::Arc;

use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::RoomStore;

use crate::notifier::Notifier;

/// Wakes the syncs a device-list change concerns. Handed to the
/// components that change device lists (`Accounts` deletes devices,
/// `Keys` uploads keys and signatures).
pub struct DeviceLists {
    rooms: Arc<dyn RoomStore>,
    notifier: Arc<Notifier>,
}

impl DeviceLists {
    pub fn new(rooms: Arc<dyn RoomStore>, notifier: Arc<Notifier>) -> Self {
        Self { rooms, notifier }
    }

    /// `user_id`'s device list changed (and was committed).
    pub async fn changed(&self, user_id: &str) {
        self.notifier.user(user_id);
        // A failed read only delays the others' wake-up to their next
        // change or timeout; the change itself is stored.
        match self.rooms.memberships_of_user(user_id).await {
            Ok(memberships) => {
                for m in memberships.iter().filter(|m| m.membership == MembershipState::Join) {
                    self.notifier.room(&m.room_id);
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
