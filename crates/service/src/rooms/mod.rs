//! Rooms, as five components and what they share:
//!
//! - [`RoomWriter`] (`writer/`): the write path. One room's events are
//!   built, authorised and persisted in order under a per-room lock;
//!   different rooms never wait on each other. The store rejects an append
//!   whose `prev_events` are stale (another node went first), and the
//!   event is rebuilt on the new extremities.
//! - [`Rooms`] (`actions/`): what clients do to rooms through the writer:
//!   create, send, set state, redact, join, leave, invite, kick, ban,
//!   knock, forget, upgrade.
//! - [`RoomReader`] (`reader/`): reading rooms back: events, state,
//!   members, `/messages`, `/context`, relations and threads.
//! - [`Visibility`]: history visibility, which events a user may read.
//! - [`EventFormatter`] (`format.rs`): stored PDUs as clients see them,
//!   with bundled aggregations.
//!
//! Shared here: the room versions served, the state map the auth rules
//! work on, power levels, pagination tokens, and reads of current state
//! (`state.rs`) that every room component does the same way.

mod actions;
pub(crate) mod filter;
mod format;
mod reader;
pub(crate) mod state;
mod visibility;
pub(crate) mod writer;

use std::collections::BTreeMap;

use chancery_core::pdu::{Pdu, PduError};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource};
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::{RoomVersionId, UserId};

pub(crate) use actions::check_txn_id;
pub use actions::{CreateRoom, EncryptionByDefault, MembershipAction, Preset, Rooms, RoomsConfig, RoomsDeps, UpgradeRoom};
pub use format::{ClientEventOptions, EventFormatter, EventFormatterDeps};
pub use reader::{ContextPage, MessagesPage, RelationsPage, RelationsRequest, RoomReader, RoomReaderDeps, ThreadsPage};
pub use visibility::Visibility;
pub use writer::{RoomWriter, RoomWriterDeps, ServerIdentity};

use crate::Error;

/// Room versions this server creates and joins.
pub const SUPPORTED_ROOM_VERSIONS: &[RoomVersionId] = &[RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// The version a client or operator asked for, if this server supports it.
pub fn supported_room_version(requested: &str) -> Option<RoomVersionId> {
    SUPPORTED_ROOM_VERSIONS.iter().find(|v| v.as_str() == requested).cloned()
}

pub(crate) type StateMap = BTreeMap<(StateEventType, String), Pdu>;

/// Which way a page goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Backward,
    Forward,
}

/// Pagination tokens are `s<position>` in the events stream. A sync token
/// ([`crate::StreamToken`]) starts the same way and adds `_`-separated
/// parts for the other streams, which this parser ignores, so a sync's
/// `next_batch` also works as a `/messages` `from`.
pub fn format_token(pos: u64) -> String {
    format!("s{pos}")
}

/// A `/messages` token inside a room's history from before this server
/// joined it ([`crate::RoomHistory`]): `h<ordinal>`, the page goes on
/// after that ordinal. Apart from the stream, so it never looks like a
/// sync token.
pub fn format_history_token(ordinal: u64) -> String {
    format!("h{ordinal}")
}

/// The ordinal of a history token, `None` for any other token.
pub fn parse_history_token(token: &str) -> Option<u64> {
    token.strip_prefix('h').and_then(|rest| rest.parse().ok())
}

pub fn parse_token(token: &str) -> Result<u64, Error> {
    token
        .strip_prefix('s')
        .and_then(|rest| rest.split('_').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::InvalidParam("malformed pagination token".into()))
}

pub(crate) fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules, Error> {
    version.rules().ok_or_else(|| Error::Internal(format!("no rules for room version {version}")))
}

/// The power levels in force, with v12 room creators' unlimited power.
pub(crate) fn power_levels(state: &StateMap, rules: &RoomVersionRules) -> Result<RoomPowerLevels, Error> {
    let mut creators = Vec::new();
    if rules.authorization.explicitly_privilege_room_creators
        && let Some(create) = state.get(&(StateEventType::RoomCreate, String::new()))
    {
        creators.push(create.sender.clone());
        if let Some(extra) = create.content_json().get("additional_creators").and_then(|a| a.as_array()) {
            creators.extend(extra.iter().filter_map(|u| u.as_str()).filter_map(|u| UserId::parse(u).ok()));
        }
    }
    let source = match state.get(&(StateEventType::RoomPowerLevels, String::new())) {
        Some(pdu) => RoomPowerLevelsSource::Original(
            serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get())
                .map_err(|e| Error::Internal(format!("stored power levels: {e}")))?,
        ),
        None => RoomPowerLevelsSource::None,
    };
    Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
}

impl From<PduError> for Error {
    fn from(e: PduError) -> Self {
        match e {
            PduError::TooLarge => Error::TooLarge(e.to_string()),
            PduError::Invalid(m) => Error::BadJson(m),
            PduError::Forbidden(m) => Error::Forbidden(m),
        }
    }
}
