//! The directory component: room aliases (`aliases.rs`, client-server API
//! "Room aliases") and the published room directory (`public_rooms.rs`,
//! "Published room directory"). Only aliases of this server exist until
//! federation does.

mod aliases;
mod public_rooms;

use std::sync::Arc;

use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::{OwnedServerName, RoomId};
use chancery_store::{DirectoryStore, RoomStore};

pub use public_rooms::PublicRoomsRequest;

use crate::clock::Clock;
use crate::rooms::state::{POWER_KEYS, ensure_joined, state_subset};
use crate::rooms::{RoomWriter, power_levels, rules_of};
use crate::{AuthedUser, Error};

/// What [`Directory`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct DirectoryDeps {
    pub store: Arc<dyn DirectoryStore>,
    /// Rooms' existence, memberships and power over addresses.
    pub rooms: Arc<dyn RoomStore>,
    /// Deleting an alias also takes it out of the room's canonical alias.
    pub writer: Arc<RoomWriter>,
    /// Only aliases of this server are served.
    pub server_name: OwnedServerName,
    /// When an alias was created.
    pub clock: Arc<dyn Clock>,
    /// Other servers' aliases are asked of them.
    pub federation: Arc<crate::Federation>,
}

/// Room addresses and the room directory.
pub struct Directory {
    deps: DirectoryDeps,
}

impl Directory {
    pub fn new(deps: DirectoryDeps) -> Self {
        Self { deps }
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.deps.server_name
    }

    /// Power over a room's addresses (deleting others' aliases, the
    /// directory listing): a server admin, or a joined member who may send
    /// `m.room.canonical_alias`.
    async fn ensure_can_edit_addresses(&self, user: &AuthedUser, room_id: &RoomId) -> Result<(), Error> {
        let Some(info) = self.deps.rooms.room(room_id.as_str()).await? else {
            return Err(if user.is_admin {
                Error::NotFound("this server does not know that room".into())
            } else {
                Error::Forbidden("you are not joined to this room".into())
            });
        };
        if user.is_admin {
            return Ok(());
        }
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let rules = rules_of(&info.room_version)?;
        let state = state_subset(&*self.deps.rooms, room_id, &POWER_KEYS).await?;
        if power_levels(&state, &rules)?.user_can_send_state(&user.user_id, StateEventType::RoomCanonicalAlias) {
            Ok(())
        } else {
            Err(Error::Forbidden("you need the power to change the room's canonical alias".into()))
        }
    }
}
