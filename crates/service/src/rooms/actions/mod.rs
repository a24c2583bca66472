//! The rooms component: what clients do to rooms, each action checked and
//! then written through the [`RoomWriter`]: creating rooms (`create.rs`),
//! sending messages and state, redacting (here), memberships, knocks and
//! forgets (`membership.rs`, `knock.rs`, `forget.rs`), upgrades
//! (`upgrade.rs`).

mod create;
mod delayed;
mod forget;
mod knock;
mod membership;
mod upgrade;

use std::sync::Arc;

use chancery_core::pdu::EventDraft;
use chancery_proto::limits::MAX_TXN_ID_BYTES;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId};
use chancery_store::{AccountStore, DirectoryStore, ForgottenRoomStore, RoomStore, TxnKey};
use serde_json::Value as JsonValue;

pub use create::{CreateRoom, Preset};
pub use membership::MembershipAction;
pub use upgrade::UpgradeRoom;

use super::state::{POWER_KEYS, ensure_joined, event_of_room, state_subset};
use super::writer::check_type_and_key;
use super::{RoomWriter, power_levels, rules_of};
use crate::clock::Clock;
use crate::directory::Directory;
use crate::notifier::Notifier;
use crate::nul::json_holds_nul;
use crate::ratelimit::Limiters;
use crate::tokens::Entropy;
use crate::{AuthedUser, Error};

/// What the rooms component needs from the configuration.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    pub server_name: OwnedServerName,
    /// Version of new rooms unless the client asks for another.
    pub default_room_version: RoomVersionId,
    /// Which new rooms are end-to-end encrypted from their creation.
    pub encryption_by_default: EncryptionByDefault,
}

/// Which rooms `createRoom` makes end-to-end encrypted (an
/// `m.room.encryption` event with Megolm) unless the client's
/// `initial_state` says otherwise. Synapse's
/// `encryption_enabled_by_default_for_room_type`, with `invite` the
/// default here: private rooms are encrypted, as officials expect of a
/// messenger, and public ones stay readable by whoever joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionByDefault {
    /// Rooms of the `private_chat` and `trusted_private_chat` presets.
    #[default]
    Invite,
    /// Every room.
    All,
    /// None: clients decide.
    Off,
}

/// What [`Rooms`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct RoomsDeps {
    pub config: RoomsConfig,
    /// Every event goes through it.
    pub writer: Arc<RoomWriter>,
    /// Memberships and state the actions are checked against.
    pub rooms: Arc<dyn RoomStore>,
    /// Rooms created or upgraded together with their aliases and listing.
    pub addresses: Arc<dyn DirectoryStore>,
    pub forgotten: Arc<dyn ForgottenRoomStore>,
    /// Invitees must exist; joins copy the joiner's profile.
    pub accounts: Arc<dyn AccountStore>,
    /// Aliases: resolved for joins and knocks, created with rooms, checked
    /// in canonical alias events.
    pub directory: Arc<Directory>,
    /// A new room's creator and invitees wait on no room yet.
    pub notifier: Arc<Notifier>,
    /// Per-user bounds on events, rooms and invites.
    pub limiters: Arc<Limiters>,
    pub clock: Arc<dyn Clock>,
    /// Room ids of versions that do not derive them from the create event.
    pub entropy: Arc<dyn Entropy>,
    /// Joins of rooms this server is not in go through another server.
    pub federation: Arc<crate::federation::RoomFederation>,
}

/// Room actions of clients.
pub struct Rooms {
    deps: RoomsDeps,
}

impl Rooms {
    pub fn new(deps: RoomsDeps) -> Self {
        Self { deps }
    }

    pub fn default_room_version(&self) -> &RoomVersionId {
        &self.deps.config.default_room_version
    }

    /// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
    pub async fn send_message(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_type: &str,
        txn_id: &str,
        content: JsonValue,
    ) -> Result<OwnedEventId, Error> {
        check_type_and_key(event_type, None)?;
        check_txn_id(txn_id)?;
        if !content.is_object() {
            return Err(Error::BadJson("content must be a JSON object".into()));
        }
        if event_type == "m.room.redaction" {
            return Err(Error::InvalidParam("use /redact to redact events".into()));
        }
        let txn = TxnKey { user_id: user.user_id.to_string(), device_id: user.device_id.clone(), txn_id: txn_id.to_owned() };
        // Refused before the room's write lock: a flood, or an outsider's
        // sends, must not queue in front of the members' sends. The writer
        // checks membership again under the lock, where the answer is
        // final. A retry of a send that went through is answered with its
        // event whatever the limits say now.
        let admitted = match self.deps.limiters.events_per_user.check_user(user) {
            Ok(()) => ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await,
            Err(e) => Err(e),
        };
        if let Err(refusal) = admitted {
            return match self.deps.writer.event_of_txn(&txn, room_id).await? {
                Some(existing) => Ok(existing),
                None => Err(refusal),
            };
        }
        let draft = draft(&user.user_id, event_type, None, content, None);
        Ok(self.deps.writer.append_as_member(room_id, draft, Some(txn)).await?.0)
    }

    /// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`.
    pub async fn send_state(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        content: JsonValue,
    ) -> Result<OwnedEventId, Error> {
        check_type_and_key(event_type, Some(state_key))?;
        if !content.is_object() {
            return Err(Error::BadJson("content must be a JSON object".into()));
        }
        if event_type == "m.room.member" {
            return Err(Error::InvalidParam(
                "use the membership endpoints (/invite, /join, /leave, /kick, /ban) to change memberships".into(),
            ));
        }
        if event_type == "m.room.create" {
            return Err(Error::Forbidden("a room has exactly one create event".into()));
        }
        self.deps.limiters.events_per_user.check_user(user)?;
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        if event_type == "m.room.canonical_alias" && state_key.is_empty() {
            self.deps.directory.check_canonical_alias(room_id, &content).await?;
        }
        let draft = draft(&user.user_id, event_type, Some(state_key), content, None);
        Ok(self.deps.writer.append(room_id, draft, None).await?.0)
    }

    /// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.
    pub async fn redact(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        target: &EventId,
        txn_id: &str,
        reason: Option<String>,
    ) -> Result<OwnedEventId, Error> {
        check_txn_id(txn_id)?;
        self.deps.limiters.events_per_user.check_user(user)?;
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await?;
        let Some(event) = event_of_room(&*self.deps.rooms, room_id, target.as_str()).await? else {
            return Err(Error::NotFound("no such event in this room".into()));
        };
        let info = self.deps.rooms.room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
        let rules = rules_of(&info.room_version)?;
        // The auth rules let anyone send a redaction event; whether it takes
        // effect depends on the redact power level, unless the sender
        // redacts their own event (spec "Redactions", client behaviour).
        if event.sender != user.user_id.as_str() {
            let state = state_subset(&*self.deps.rooms, room_id, &POWER_KEYS).await?;
            if !power_levels(&state, &rules)?.user_can_redact_event_of_other(&user.user_id) {
                return Err(Error::Forbidden("you may only redact your own events".into()));
            }
        }
        let mut content = serde_json::Map::new();
        if let Some(reason) = reason {
            content.insert("reason".into(), JsonValue::String(reason));
        }
        if rules.redaction.content_field_redacts {
            content.insert("redacts".into(), JsonValue::String(target.to_string()));
        }
        let draft = draft(&user.user_id, "m.room.redaction", None, JsonValue::Object(content), Some(target));
        let txn = TxnKey {
            user_id: user.user_id.to_string(),
            // Redactions have their own transaction ids: the namespace goes
            // in the device part, which clients cannot put control
            // characters in, so no `/send` id can collide with it.
            device_id: format!("{}\u{1}redact", user.device_id),
            txn_id: txn_id.to_owned(),
        };
        Ok(self.deps.writer.append(room_id, draft, Some(txn)).await?.0)
    }

    /// Invites and other user-targeted actions only reach local accounts
    /// until federation exists.
    async fn ensure_local_user(&self, user_id: &UserId) -> Result<(), Error> {
        if user_id.server_name() != self.deps.config.server_name {
            return Err(Error::Forbidden(format!(
                "{user_id} is on another server; federation is not available on this server yet"
            )));
        }
        match self.deps.accounts.account(user_id.as_str()).await? {
            Some(a) if !a.deactivated => Ok(()),
            _ => Err(Error::NotFound(format!("{user_id} does not exist"))),
        }
    }

    /// The content of the user's own join (or knock): the membership and
    /// their profile's display name and avatar. A field holding U+0000,
    /// stored before profiles refused it, is left out rather than failing
    /// the join (the writer refuses events holding it).
    async fn member_content(&self, user_id: &UserId, membership: MembershipState) -> Result<JsonValue, Error> {
        let mut content = serde_json::json!({ "membership": membership });
        let profile = self.deps.accounts.profile(user_id.as_str()).await?;
        for field in ["displayname", "avatar_url"] {
            if let Some(v) = profile.get(field).filter(|v| !json_holds_nul(v)) {
                content[field] = v.clone();
            }
        }
        Ok(content)
    }
}

pub(crate) fn check_txn_id(txn_id: &str) -> Result<(), Error> {
    if txn_id.is_empty() || txn_id.len() > MAX_TXN_ID_BYTES {
        return Err(Error::InvalidParam("bad transaction id".into()));
    }
    Ok(())
}

/// A draft of an event the user sends.
fn draft(
    sender: &UserId,
    event_type: &str,
    state_key: Option<&str>,
    content: JsonValue,
    redacts: Option<&EventId>,
) -> EventDraft {
    EventDraft {
        room_id: None,
        sender: sender.to_owned(),
        event_type: event_type.to_owned(),
        state_key: state_key.map(str::to_owned),
        content,
        redacts: redacts.map(ToOwned::to_owned),
    }
}
