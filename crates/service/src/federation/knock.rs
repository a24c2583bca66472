//! Knocking across servers (server-server API "Knocking upon a room",
//! spec v1.19): `make_knock` / `send_knock` both ways.
//!
//! Inbound, a knock is made and checked like a join (`make_membership`:
//! the room is one a local user is joined to, `m.federate` is not false,
//! the server ACL lets the origin in, the room version has knocking, the
//! auth rules would allow it), then appended through the write path, so
//! local members see the `m.room.member` knock like any other event.
//!
//! Outbound, a local user's knock on a room this server does not have
//! goes through the servers named (`via`, the alias's servers, the room
//! id's server). The room is then kept as a **stub** (as invites to
//! unknown rooms are, see `RoomFederation::receive_invite`): the knock
//! and the verified stripped state the resident server answered with,
//! without the create event, so `/sync` shows the room under
//! `rooms.knock` with its name, join rules and so on, and an invite that
//! accepts the knock lands in the stub. Joining replaces the stub whole.

use std::collections::BTreeSet;

use chancery_core::pdu::Pdu;
use chancery_proto::limits::MAX_FEDERATION_JOIN_SERVERS;
use chancery_proto::ruma::api::federation::membership::{RawStrippedState, create_knock_event, prepare_knock_event};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId};
use chancery_store::{NewRoom, StoreError};
use serde_json::Value as JsonValue;
use serde_json::value::RawValue as RawJsonValue;

use super::RoomFederation;
use super::rooms::raw_json;
use crate::Error;
use crate::rooms::rules_of;
use crate::rooms::writer::new_event;

/// At most this many stripped-state events of a `send_knock` answer are
/// looked at (the spec's list has about ten types).
const MAX_KNOCK_STATE_EVENTS: usize = 50;

impl RoomFederation {
    /// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`: a knock
    /// for `user_id` to sign, if the room's rules let the user knock. 400
    /// `M_INCOMPATIBLE_ROOM_VERSION` when the room's version is not among
    /// `versions` or has no knocking; 403 when the join rule (or a ban)
    /// refuses it; 404 for a room no local user is joined to.
    pub async fn make_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject), Error> {
        self.make_membership(origin, room_id, user_id, Some(versions), MembershipState::Knock).await
    }

    /// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`: checks
    /// and appends the signed knock of one of `origin`'s users, and answers
    /// with the room's stripped state (`knock_room_state`).
    pub async fn send_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        raw: &RawJsonValue,
    ) -> Result<Vec<RawStrippedState>, Error> {
        let pdu = self.signed_membership(origin, room_id, event_id, raw, MembershipState::Knock).await?;
        self.deps.writer.append_received(room_id, &pdu).await?;
        self.stripped_state(room_id, None).await
    }

    /// Knocks for `user` on a room this server does not have (or has only
    /// as a stub), through one of `servers` (then the room id's server),
    /// tried in turn: `make_knock`, sign, `send_knock`, then the stub is
    /// kept here. `content` is the knock's content beyond `membership`.
    pub async fn knock_remote(
        &self,
        user: &UserId,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        content: JsonValue,
    ) -> Result<(), Error> {
        let mut candidates: Vec<OwnedServerName> = servers.iter().filter(|s| **s != self.deps.server_name).cloned().collect();
        candidates.extend(self.stub_servers(user, room_id).await?);
        let mut seen = BTreeSet::new();
        candidates.retain(|s| seen.insert(s.clone()));
        candidates.truncate(MAX_FEDERATION_JOIN_SERVERS);
        if candidates.is_empty() {
            return Err(Error::NotFound("this server does not know that room, and no server to knock through was named".into()));
        }
        // A refusal (the room's rules, a ban, its version) says more than
        // a server that does not know the room: it is the answer when no
        // server lets the knock through.
        let mut refusal = None;
        let mut last_error = None;
        for server in &candidates {
            match self.knock_through(server, user, room_id, &content).await {
                Ok(()) => {
                    self.deps.notifier.user(user.as_str());
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(server = %server, room_id = %room_id, error = %e, "knocking through a server failed");
                    match e {
                        Error::Forbidden(_) | Error::IncompatibleRoomVersion { .. } if refusal.is_none() => refusal = Some(e),
                        e => last_error = Some(e),
                    }
                }
            }
        }
        Err(refusal.or(last_error).expect("at least one candidate was tried"))
    }

    async fn knock_through(&self, server: &ServerName, user: &UserId, room_id: &RoomId, extra: &JsonValue) -> Result<(), Error> {
        let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = crate::rooms::SUPPORTED_ROOM_VERSIONS.to_vec();
        let made = self.deps.federation.send(server, request).await?;
        let room_version = made.room_version;
        if !crate::rooms::SUPPORTED_ROOM_VERSIONS.contains(&room_version) {
            return Err(Error::IncompatibleRoomVersion { room_version: room_version.to_string() });
        }
        let rules = rules_of(&room_version)?;
        if !rules.authorization.knocking {
            return Err(Error::IncompatibleRoomVersion { room_version: room_version.to_string() });
        }
        let knock = self.sign_made(&made.event, &rules, user, room_id, MembershipState::Knock, extra)?;
        let answer = self
            .deps
            .federation
            .send(
                server,
                create_knock_event::v1::Request::new(room_id.to_owned(), knock.event_id.clone(), raw_json(&knock.json)?),
            )
            .await?;
        let state = self.verified_knock_state(&room_version, room_id, &answer.knock_room_state).await;
        self.keep_knock(room_id, &room_version, &knock, &state).await
    }

    /// The events of a `knock_room_state` worth keeping in the stub: full
    /// PDUs of this room whose signatures and hashes check, of the types
    /// a knocker is shown, but neither the create event (a stub has none:
    /// that is what makes it one) nor member events. Others are dropped,
    /// as the spec says improperly signed entries should be.
    async fn verified_knock_state(
        &self,
        room_version: &RoomVersionId,
        room_id: &RoomId,
        entries: &[RawStrippedState],
    ) -> Vec<Pdu> {
        let mut kept: Vec<Pdu> = Vec::new();
        for entry in entries.iter().take(MAX_KNOCK_STATE_EVENTS) {
            let RawStrippedState::Pdu(raw) = entry else { continue };
            let Ok(pdu) = self.check_pdu(room_version, raw).await else { continue };
            let event_type = pdu.event_type.to_string();
            let shown = crate::sync::rooms::INVITE_STATE_TYPES.contains(&event_type.as_str()) && event_type != "m.room.create";
            if shown && pdu.state_key.as_deref() == Some("") && pdu.room_id.as_deref() == Some(room_id) {
                kept.push(pdu);
            }
        }
        kept
    }

    /// Keeps the knock (after the stripped state) in the room's stub,
    /// created if this server does not know the room.
    async fn keep_knock(&self, room_id: &RoomId, room_version: &RoomVersionId, knock: &Pdu, state: &[Pdu]) -> Result<(), Error> {
        if self.deps.rooms.room(room_id.as_str()).await?.is_none() {
            let room = NewRoom {
                room_id: room_id.to_string(),
                room_version: room_version.clone(),
                creator: knock.sender.to_string(),
                created_ts: knock.origin_server_ts.get().into(),
            };
            let events = state.iter().chain([knock]).map(|p| new_event(p, room_id, None, Vec::new())).collect();
            match self.deps.rooms.create_room(room, events).await {
                Ok(_) => return Ok(()),
                // Created meanwhile (an invite arrived): appended below.
                Err(StoreError::RoomIdTaken) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !self.is_stub(room_id).await? {
            // Joined meanwhile by another local user: the knock is an event
            // of the room like any other.
            self.deps.writer.append_received(room_id, knock).await?;
            return Ok(());
        }
        for event in state.iter().chain([knock]) {
            self.deps.writer.append_to_stub(room_id, event).await?;
        }
        Ok(())
    }
}
