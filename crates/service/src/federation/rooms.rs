//! Rooms across servers: joins both ways (`make_join` / `send_join` v2),
//! invites, leaves, the reads servers in a room make of it, and the PDUs
//! of inbound transactions. Knocks are in `knock.rs`, `timestamp_to_event`
//! in `timestamp.rs` (the same component).
//!
//! Every received PDU is checked as the spec orders (server-server API,
//! "Checks performed on receipt of a PDU"): format and size, the
//! signatures of the servers that must have signed it, its content hash
//! (a mismatch keeps it redacted), then the auth rules against the room's
//! current state in the write path ([`RoomWriter::append_received`]). A
//! PDU that fails is not stored and its error is answered per event.
//!
//! Missing `prev_events` of a received PDU are asked of its origin first
//! (`get_missing_events`, one answer's worth).
//!
//! What is not done yet (issue 16): forks are linearised (a received event
//! is appended after the room's current extremities, its state applied in
//! arrival order, with only state resolution v2's tie-break), and joins
//! take the whole state at once (no partial state).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chancery_core::pdu::{self, Pdu};
use chancery_proto::limits::{
    MAX_FEDERATION_JOIN_SERVERS, MAX_FEDERATION_PAGE, MAX_JOIN_STATE_EVENTS, MAX_MISSING_EVENTS_FETCH, MAX_TRANSACTION_PDUS,
};
use chancery_proto::ruma::api::federation::event::get_missing_events;
use chancery_proto::ruma::api::federation::membership::{
    RawStrippedState, create_invite, create_join_event, create_leave_event, prepare_join_event, prepare_leave_event,
};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UInt, UserId,
};
use chancery_store::{AccountStore, NewRoom, RelationStore, RoomStore, StoreError};
use serde_json::Value as JsonValue;
use serde_json::value::RawValue as RawJsonValue;

use super::Federation;
use crate::Error;
use crate::clock::Clock;
use crate::notifier::Notifier;
use crate::rooms::state::state_subset;
use crate::rooms::writer::new_event;
use crate::rooms::{RoomWriter, rules_of};

/// What [`RoomFederation`] is built from.
pub struct RoomFederationDeps {
    pub federation: Arc<Federation>,
    pub rooms: Arc<dyn RoomStore>,
    /// `timestamp_to_event` answers.
    pub relations: Arc<dyn RelationStore>,
    /// Received events go through the write path like local ones.
    pub writer: Arc<RoomWriter>,
    pub server_name: OwnedServerName,
    pub clock: Arc<dyn Clock>,
    /// Invites are accepted only for this server's active users.
    pub accounts: Arc<dyn AccountStore>,
    /// Users whose rooms appear or change outside the write path (a room
    /// joined over federation, an invite to a room of another server).
    pub notifier: Arc<Notifier>,
    /// Rooms joined through another server have history before the join.
    pub history: Arc<super::RoomHistory>,
}

/// The answer to a `send_join`: the room's state before the join, its
/// auth chain, and the join as stored.
#[derive(Debug)]
pub struct SendJoinAnswer {
    pub state: Vec<Box<RawJsonValue>>,
    pub auth_chain: Vec<Box<RawJsonValue>>,
    pub event: Box<RawJsonValue>,
}

/// Rooms shared with other servers.
pub struct RoomFederation {
    pub(super) deps: RoomFederationDeps,
}

impl RoomFederation {
    pub fn new(deps: RoomFederationDeps) -> Self {
        Self { deps }
    }

    // ----- inbound -----

    /// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`: a join
    /// event for `user_id` to sign, if the room's rules let the user join.
    pub async fn make_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject), Error> {
        self.make_membership(origin, room_id, user_id, Some(versions), MembershipState::Join).await
    }

    /// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`: a leave
    /// (or an invite's refusal) for `user_id` to sign.
    pub async fn make_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, CanonicalJsonObject), Error> {
        self.make_membership(origin, room_id, user_id, None, MembershipState::Leave).await
    }

    pub(super) async fn make_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        versions: Option<&[RoomVersionId]>,
        membership: MembershipState,
    ) -> Result<(RoomVersionId, CanonicalJsonObject), Error> {
        if user_id.server_name() != origin {
            return Err(Error::Forbidden("a server may only make membership events for its own users".into()));
        }
        let info = self.joined_room(room_id).await?;
        self.ensure_acl(room_id, origin).await?;
        if versions.is_some_and(|v| !v.contains(&info.room_version)) {
            return Err(Error::IncompatibleRoomVersion { room_version: info.room_version.to_string() });
        }
        let rules = rules_of(&info.room_version)?;
        if membership == MembershipState::Knock && !rules.authorization.knocking {
            return Err(Error::IncompatibleRoomVersion { room_version: info.room_version.to_string() });
        }
        let draft = pdu::EventDraft {
            room_id: Some(room_id.to_owned()),
            sender: user_id.to_owned(),
            event_type: "m.room.member".into(),
            state_key: Some(user_id.to_string()),
            content: serde_json::json!({ "membership": membership }),
            redacts: None,
        };
        let auth_types = pdu::auth_types(&draft, &rules)?;
        let mut keys = auth_types.clone();
        keys.push((StateEventType::RoomCreate, String::new()));
        let state = state_subset(&*self.deps.rooms, room_id, &keys).await?;
        let auth_events: Vec<OwnedEventId> = auth_types.iter().filter_map(|k| state.get(k)).map(|p| p.event_id.clone()).collect();
        let mut template = CanonicalJsonObject::new();
        let ids =
            |v: &[OwnedEventId]| CanonicalJsonValue::Array(v.iter().map(|e| CanonicalJsonValue::String(e.to_string())).collect());
        let prev: Vec<OwnedEventId> = info.forward_extremities.iter().filter_map(|e| e.parse().ok()).collect();
        template.insert("auth_events".into(), ids(&auth_events));
        let content = serde_json::json!({ "membership": membership }).try_into().map_err(|e| Error::Internal(format!("{e}")))?;
        template.insert("content".into(), content);
        template.insert("depth".into(), CanonicalJsonValue::Integer((info.max_depth + 1).try_into().unwrap_or_default()));
        template.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(self.deps.clock.now_ms().try_into().unwrap_or_default()),
        );
        template.insert("prev_events".into(), ids(&prev));
        template.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
        template.insert("sender".into(), CanonicalJsonValue::String(user_id.to_string()));
        template.insert("state_key".into(), CanonicalJsonValue::String(user_id.to_string()));
        template.insert("type".into(), CanonicalJsonValue::String("m.room.member".into()));
        // Would it be allowed now? (Checked again when it comes back.)
        let json = CanonicalJsonValue::Object(template.clone()).to_string();
        let unsigned = Pdu::from_json("$template", &json)?;
        pdu::authorize(&rules, &unsigned, &state)?;
        Ok((info.room_version, template))
    }

    /// A join or leave one of `origin`'s users signed for themselves
    /// (`send_join`, `send_leave`), checked: the room is one this server is
    /// in, the ACL lets `origin` in, the PDU checks, its id is `event_id`.
    pub(super) async fn signed_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        raw: &RawJsonValue,
        membership: MembershipState,
    ) -> Result<Pdu, Error> {
        let info = self.joined_room(room_id).await?;
        self.ensure_acl(room_id, origin).await?;
        let pdu = self.check_pdu(&info.room_version, raw).await?;
        if &pdu.event_id != event_id {
            return Err(Error::BadJson("the event id does not match the event".into()));
        }
        if !is_own_membership(&pdu, origin, room_id, membership.clone()) {
            return Err(Error::BadJson(format!("not a {membership} of one of the origin's users in this room")));
        }
        Ok(pdu)
    }

    /// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`: checks
    /// and appends the signed leave of one of `origin`'s users.
    pub async fn send_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        raw: &RawJsonValue,
    ) -> Result<(), Error> {
        let pdu = self.signed_membership(origin, room_id, event_id, raw, MembershipState::Leave).await?;
        self.deps.writer.append_received(room_id, &pdu).await?;
        Ok(())
    }

    /// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another
    /// server invites one of this server's users. The invite is checked,
    /// countersigned and kept: appended if this server is in the room,
    /// else as the only event of a room known only through it (a stub,
    /// replaced whole when the user joins).
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        room_version: &RoomVersionId,
        raw: &RawJsonValue,
    ) -> Result<Box<RawJsonValue>, Error> {
        if !crate::rooms::SUPPORTED_ROOM_VERSIONS.contains(room_version) {
            return Err(Error::IncompatibleRoomVersion { room_version: room_version.to_string() });
        }
        let pdu = self.check_pdu(room_version, raw).await?;
        let membership = pdu.content_json().get("membership").and_then(JsonValue::as_str).map(MembershipState::from);
        let target = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
        let valid = &pdu.event_id == event_id
            && pdu.event_type.to_string() == "m.room.member"
            && membership == Some(MembershipState::Invite)
            && pdu.sender.server_name() == origin
            && pdu.room_id.as_deref() == Some(room_id);
        let Some(target) = target.filter(|t| valid && t.server_name() == self.deps.server_name) else {
            return Err(Error::BadJson("not an invite of one of this server's users to this room".into()));
        };
        match self.deps.accounts.account(target.as_str()).await? {
            Some(account) if !account.deactivated => {}
            _ => return Err(Error::NotFound(format!("{target} does not exist"))),
        }
        let mut object: CanonicalJsonObject = serde_json::from_str(&pdu.json).map_err(|e| Error::Internal(e.to_string()))?;
        chancery_proto::ruma::signatures::sign_json(
            self.deps.server_name.as_str(),
            self.deps.federation.signing_key(),
            &mut object,
        )
        .map_err(|e| Error::BadJson(e.to_string()))?;
        let signed = Pdu::from_json(pdu.event_id.as_str(), &CanonicalJsonValue::Object(object).to_string())?;
        if !server_allowed_in_room(&*self.deps.rooms, room_id, origin).await? {
            return Err(Error::Forbidden(format!("the room's server ACL denies {origin}")));
        }
        match self.deps.rooms.room(room_id.as_str()).await? {
            Some(_) if self.is_stub(room_id).await? => {
                self.deps.writer.append_to_stub(room_id, &signed).await?;
            }
            Some(_) => {
                self.deps.writer.append_received(room_id, &signed).await?;
            }
            None => {
                let room = NewRoom {
                    room_id: room_id.to_string(),
                    room_version: room_version.clone(),
                    creator: signed.sender.to_string(),
                    created_ts: signed.origin_server_ts.get().into(),
                };
                match self.deps.rooms.create_room(room, vec![new_event(&signed, room_id, None, Vec::new())]).await {
                    Ok(_) | Err(StoreError::RoomIdTaken) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.deps.notifier.user(target.as_str());
        raw_json(&signed.json)
    }

    /// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: checks
    /// the signed join of one of `origin`'s users, appends it, and answers
    /// with the state before it and the auth chain.
    pub async fn send_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        raw: &RawJsonValue,
    ) -> Result<SendJoinAnswer, Error> {
        let pdu = self.signed_membership(origin, room_id, event_id, raw, MembershipState::Join).await?;
        let pos = self.deps.writer.append_received(room_id, &pdu).await?;
        // Position 0: the join was stored already (a retried send_join).
        let _ = pos;
        let stored =
            self.deps.rooms.event(pdu.event_id.as_str()).await?.ok_or_else(|| Error::Internal("join vanished".into()))?;
        let state = self.deps.rooms.state_at(room_id.as_str(), Some(stored.stream_pos.saturating_sub(1))).await?;
        if state.len() > MAX_JOIN_STATE_EVENTS {
            return Err(Error::TooLarge("the room's state is larger than this server hands out at once".into()));
        }
        let auth_chain = self.auth_chain(state.iter().map(|e| e.json.as_str()).chain([stored.json.as_str()])).await?;
        Ok(SendJoinAnswer {
            state: state.iter().map(|e| raw_json(&e.json)).collect::<Result<_, _>>()?,
            auth_chain: auth_chain.iter().map(|(_, json)| raw_json(json)).collect::<Result<_, _>>()?,
            event: raw_json(&stored.json)?,
        })
    }

    /// The PDUs of `PUT /_matrix/federation/v1/send/{txnId}`: each checked
    /// and appended on its own; the answer says per event what failed.
    pub async fn receive_pdus(
        &self,
        origin: &ServerName,
        pdus: &[Box<RawJsonValue>],
    ) -> Result<BTreeMap<OwnedEventId, Result<(), String>>, Error> {
        if pdus.len() > MAX_TRANSACTION_PDUS {
            return Err(Error::TooLarge(format!("a transaction holds at most {MAX_TRANSACTION_PDUS} PDUs")));
        }
        let mut results = BTreeMap::new();
        for raw in pdus {
            let Some(room_id) = room_id_of(raw) else {
                tracing::debug!(origin = %origin, "a PDU without a room id");
                continue;
            };
            let outcome = self.receive_one(origin, &room_id, raw).await;
            match outcome {
                Ok(event_id) => {
                    results.insert(event_id, Ok(()));
                }
                Err((Some(event_id), e)) => {
                    tracing::info!(origin = %origin, event_id = %event_id, error = %e, "a received PDU was refused");
                    results.insert(event_id, Err(e.to_string()));
                }
                Err((None, e)) => tracing::info!(origin = %origin, error = %e, "an unreadable PDU was dropped"),
            }
        }
        Ok(results)
    }

    async fn receive_one(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        raw: &RawJsonValue,
    ) -> Result<OwnedEventId, (Option<OwnedEventId>, Error)> {
        let info = self.deps.rooms.room(room_id.as_str()).await.map_err(|e| (None, e.into()))?;
        let info = info.ok_or_else(|| (None, Error::NotFound(format!("this server is not in {room_id}"))))?;
        let pdu = self.check_pdu(&info.room_version, raw).await.map_err(|e| (None, e))?;
        self.ensure_acl(room_id, origin).await.map_err(|e| (Some(pdu.event_id.clone()), e))?;
        self.fill_gap(origin, room_id, &info.room_version, &pdu).await;
        self.deps.writer.append_received(room_id, &pdu).await.map_err(|e| (Some(pdu.event_id.clone()), e))?;
        Ok(pdu.event_id)
    }

    /// Before a received event whose `prev_events` this server lacks: asks
    /// its origin for the events between the room's forward extremities
    /// and it (`POST /get_missing_events`, at most
    /// [`MAX_MISSING_EVENTS_FETCH`]) and appends those, oldest first, each
    /// checked like a received PDU. Synapse relies on this: after an
    /// outage it sends only each room's latest event ("catch-up"). Best
    /// effort: a gap wider than one answer stays (the event is appended
    /// after what this server has), and failures are only logged.
    async fn fill_gap(&self, origin: &ServerName, room_id: &RoomId, room_version: &RoomVersionId, pdu: &Pdu) {
        let mut missing = false;
        for prev in pdu.prev_events.iter().take(MAX_FEDERATION_PAGE) {
            match self.deps.rooms.event(prev.as_str()).await {
                Ok(Some(_)) => {}
                Ok(None) => missing = true,
                Err(e) => {
                    tracing::info!(room_id = %room_id, error = %e, "reading prev_events failed");
                    return;
                }
            }
        }
        if !missing {
            return;
        }
        let earliest = match self.deps.rooms.room(room_id.as_str()).await {
            Ok(Some(info)) => info.forward_extremities.iter().filter_map(|e| EventId::parse(e).ok()).collect(),
            _ => return,
        };
        let mut request = get_missing_events::v1::Request::new(room_id.to_owned(), earliest, vec![pdu.event_id.clone()]);
        request.limit = UInt::try_from(MAX_MISSING_EVENTS_FETCH).unwrap_or(UInt::MIN);
        let answer = match self.deps.federation.send(origin, request).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(origin = %origin, room_id = %room_id, error = %e, "fetching missing events failed");
                return;
            }
        };
        let mut events = Vec::new();
        for raw in answer.events.iter().take(MAX_MISSING_EVENTS_FETCH) {
            match self.check_pdu(room_version, raw).await {
                Ok(event) if event.room_id_or_derived().is_ok_and(|r| r == room_id) => events.push(event),
                Ok(_) => tracing::debug!(origin = %origin, "a missing event of another room"),
                Err(e) => tracing::debug!(origin = %origin, error = %e, "a missing event failed its checks"),
            }
        }
        events.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| a.event_id.cmp(&b.event_id)));
        for event in events {
            if let Err(e) = self.deps.writer.append_received(room_id, &event).await {
                tracing::info!(origin = %origin, event_id = %event.event_id, error = %e, "a missing event was refused");
            }
        }
    }

    // ----- reads other servers make of rooms they share -----

    /// `GET /event/{eventId}`: one event, for a server in its room.
    pub async fn event(&self, origin: &ServerName, event_id: &EventId) -> Result<Box<RawJsonValue>, Error> {
        let event = self.deps.rooms.event(event_id.as_str()).await?.ok_or_else(|| Error::NotFound("no such event".into()))?;
        let room_id = RoomId::parse(&event.room_id).map_err(|e| Error::Internal(e.to_string()))?;
        self.ensure_origin_in_room(origin, &room_id).await?;
        raw_json(&event.json)
    }

    /// `GET /state/{roomId}` and `/state_ids`: the room's state before the
    /// event, and its auth chain.
    pub async fn state_at_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<(OwnedEventId, String)>, Vec<(OwnedEventId, String)>), Error> {
        self.ensure_origin_in_room(origin, room_id).await?;
        let event = crate::rooms::state::event_in_room(&*self.deps.rooms, room_id, event_id).await?;
        let state = self.deps.rooms.state_at(room_id.as_str(), Some(event.stream_pos.saturating_sub(1))).await?;
        if state.len() > MAX_JOIN_STATE_EVENTS {
            return Err(Error::TooLarge("the room's state is larger than this server hands out at once".into()));
        }
        let chain = self.auth_chain(state.iter().map(|e| e.json.as_str())).await?;
        let with_ids = |events: Vec<(String, String)>| -> Vec<(OwnedEventId, String)> {
            events.into_iter().filter_map(|(id, json)| id.parse().ok().map(|id| (id, json))).collect()
        };
        let state = with_ids(state.into_iter().map(|e| (e.event_id, e.json)).collect());
        Ok((state, with_ids(chain)))
    }

    /// `GET /event_auth/{roomId}/{eventId}`: the event's auth chain.
    pub async fn event_auth(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<Box<RawJsonValue>>, Error> {
        self.ensure_origin_in_room(origin, room_id).await?;
        let event = crate::rooms::state::event_in_room(&*self.deps.rooms, room_id, event_id).await?;
        let chain = self.auth_chain(std::iter::once(event.json.as_str())).await?;
        chain.iter().map(|(_, json)| raw_json(json)).collect()
    }

    /// `GET /backfill/{roomId}`: up to `limit` events from the newest of
    /// `from` back, newest first (the store's order is the room's).
    pub async fn backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawJsonValue>>, Error> {
        self.ensure_origin_in_room(origin, room_id).await?;
        let Some(newest) = self.positions_of(room_id, from).await?.into_iter().max() else { return Ok(Vec::new()) };
        let limit = limit.clamp(1, MAX_FEDERATION_PAGE);
        let events = self.deps.rooms.room_events(room_id.as_str(), 0, newest, limit, true).await?;
        events.iter().map(|e| raw_json(&e.json)).collect()
    }

    /// `POST /get_missing_events/{roomId}`: events after the newest of
    /// `earliest` and before the oldest of `latest`, oldest first, at most
    /// `limit`, none below `min_depth`.
    pub async fn missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Box<RawJsonValue>>, Error> {
        self.ensure_origin_in_room(origin, room_id).await?;
        let after = self.positions_of(room_id, earliest).await?.into_iter().max().unwrap_or(0);
        let before = self.positions_of(room_id, latest).await?.into_iter().min();
        let Some(before) = before.filter(|b| *b > after + 1) else { return Ok(Vec::new()) };
        let limit = limit.clamp(1, MAX_FEDERATION_PAGE);
        let mut events = self.deps.rooms.room_events(room_id.as_str(), after, before - 1, limit, true).await?;
        events.retain(|e| e.depth >= min_depth);
        events.reverse();
        events.iter().map(|e| raw_json(&e.json)).collect()
    }

    /// The positions of those of `ids` (at most [`MAX_FEDERATION_PAGE`])
    /// that are events of the room here.
    async fn positions_of(&self, room_id: &RoomId, ids: &[OwnedEventId]) -> Result<Vec<u64>, Error> {
        let mut positions = Vec::new();
        for id in ids.iter().take(MAX_FEDERATION_PAGE) {
            if let Some(event) = crate::rooms::state::event_of_room(&*self.deps.rooms, room_id, id.as_str()).await? {
                positions.push(event.stream_pos);
            }
        }
        Ok(positions)
    }

    /// Other servers read a room's events only while one of their users is
    /// joined or invited to it.
    pub(super) async fn ensure_origin_in_room(&self, origin: &ServerName, room_id: &RoomId) -> Result<(), Error> {
        let suffix = format!(":{origin}");
        let present = self
            .deps
            .rooms
            .members_of_room(room_id.as_str())
            .await?
            .into_iter()
            .any(|m| matches!(m.membership, MembershipState::Join | MembershipState::Invite) && m.user_id.ends_with(&suffix));
        if !present {
            return Err(Error::Forbidden(format!("{origin} has no user in this room")));
        }
        self.ensure_acl(room_id, origin).await
    }

    // ----- outbound -----

    /// Invites a user of another server: the invite this server built and
    /// signed goes to the invitee's server with the room's stripped state
    /// (as full PDUs, spec v1.16); the countersigned event that comes back
    /// is checked and appended.
    pub async fn invite_remote(&self, room_id: &RoomId, invite: &Pdu) -> Result<(), Error> {
        let info = self.deps.rooms.room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
        self.ensure_federated(room_id).await?;
        let target = invite
            .state_key
            .as_deref()
            .and_then(|k| UserId::parse(k).ok())
            .ok_or_else(|| Error::Internal("an invite without a target".into()))?;
        let stripped = self.stripped_state(room_id, Some(&invite.sender)).await?;
        let request = create_invite::v2::Request::new(
            room_id.to_owned(),
            invite.event_id.clone(),
            info.room_version.clone(),
            raw_json(&invite.json)?,
            stripped,
        );
        let answer = self.deps.federation.send(target.server_name(), request).await?;
        let signed = self.check_pdu(&info.room_version, &answer.event).await?;
        let countersigned = serde_json::from_str::<JsonValue>(&signed.json)
            .ok()
            .and_then(|v| v.get("signatures").and_then(|s| s.get(target.server_name().as_str())).map(|_| ()))
            .is_some();
        if signed.event_id != invite.event_id || !countersigned {
            return Err(Error::UpstreamFailed(format!("{} did not countersign the invite", target.server_name())));
        }
        self.deps.writer.append_received(room_id, &signed).await?;
        Ok(())
    }

    /// The room's stripped state as another server's user is shown it
    /// before joining (an invite's `invite_room_state`, a knock's
    /// `knock_room_state`): the current `INVITE_STATE_TYPES` events, with
    /// `m.room.create`, and `sender`'s member event, as full PDUs (spec
    /// v1.16).
    pub(super) async fn stripped_state(&self, room_id: &RoomId, sender: Option<&UserId>) -> Result<Vec<RawStrippedState>, Error> {
        let keys: Vec<(String, String)> = crate::sync::rooms::INVITE_STATE_TYPES
            .iter()
            .map(|t| (t.to_string(), String::new()))
            .chain(sender.map(|s| ("m.room.member".to_owned(), s.to_string())))
            .collect();
        let mut stripped = Vec::new();
        for event in self.deps.rooms.current_state_events(room_id.as_str(), &keys).await? {
            stripped.push(RawStrippedState::Pdu(raw_json(&event.json)?));
        }
        Ok(stripped)
    }

    /// Refuses an invite to (or leaves) a room known only through the
    /// invite: `make_leave` and `send_leave` through the inviter's server,
    /// then the leave is kept here too.
    pub async fn leave_stub(&self, user: &UserId, room_id: &RoomId) -> Result<(), Error> {
        let servers = self.stub_servers(user, room_id).await?;
        let mut last_error = None;
        for server in &servers {
            let attempt = async {
                let made = self
                    .deps
                    .federation
                    .send(server, prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned()))
                    .await?;
                let room_version = made.room_version.unwrap_or(RoomVersionId::V1);
                let rules = rules_of(&room_version)?;
                let template: CanonicalJsonObject = serde_json::from_str(made.event.get())
                    .map_err(|e| Error::UpstreamFailed(format!("{server} made a bad leave: {e}")))?;
                if !is_template_for(&template, user, room_id) {
                    return Err(Error::UpstreamFailed(format!("{server} made a leave for something else")));
                }
                let leave = pdu::sign_template(
                    template,
                    &rules,
                    self.deps.clock.now_ms(),
                    &self.deps.server_name,
                    self.deps.federation.signing_key(),
                )?;
                if leave.content_json().get("membership").and_then(JsonValue::as_str) != Some("leave") {
                    return Err(Error::UpstreamFailed(format!("{server} made something else than a leave")));
                }
                self.deps
                    .federation
                    .send(
                        server,
                        create_leave_event::v2::Request::new(room_id.to_owned(), leave.event_id.clone(), raw_json(&leave.json)?),
                    )
                    .await?;
                self.deps.writer.append_to_stub(room_id, &leave).await?;
                Ok::<(), Error>(())
            };
            match attempt.await {
                Ok(()) => {
                    self.deps.notifier.user(user.as_str());
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(server = %server, room_id = %room_id, error = %e, "leaving through a server failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::NotFound("no server to leave the room through".into())))
    }

    /// Whether this server knows the room only through invites of its
    /// users (no create event here).
    pub async fn is_stub(&self, room_id: &RoomId) -> Result<bool, Error> {
        let create =
            self.deps.rooms.current_state_events(room_id.as_str(), &[("m.room.create".to_owned(), String::new())]).await?;
        Ok(create.is_empty() && self.deps.rooms.room(room_id.as_str()).await?.is_some())
    }

    /// The servers that may let `user` in or out of a stub room: the
    /// inviter's, then the room id's.
    pub(super) async fn stub_servers(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<OwnedServerName>, Error> {
        let mut servers = Vec::new();
        if let Some(invite) = self.deps.rooms.state_event(room_id.as_str(), "m.room.member", user.as_str(), None).await?
            && let Ok(sender) = UserId::parse(&invite.sender)
        {
            servers.push(sender.server_name().to_owned());
        }
        // A knock's stub keeps the room's join rules, set by a member.
        if let Some(rules) = self.deps.rooms.state_event(room_id.as_str(), "m.room.join_rules", "", None).await?
            && let Ok(sender) = UserId::parse(&rules.sender)
        {
            servers.push(sender.server_name().to_owned());
        }
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_owned());
        }
        servers.retain(|s| *s != self.deps.server_name);
        let mut seen = BTreeSet::new();
        servers.retain(|s| seen.insert(s.clone()));
        Ok(servers)
    }

    /// Joins `user` to a room this server is not in, through one of
    /// `servers` (tried in turn): `make_join`, sign, `send_join`, then the
    /// room is created here from the state the resident server answered
    /// with, each event's signatures checked.
    pub async fn join_remote(
        &self,
        user: &UserId,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        extra_content: JsonValue,
    ) -> Result<(), Error> {
        let mut candidates: Vec<OwnedServerName> = servers.iter().filter(|s| **s != self.deps.server_name).cloned().collect();
        candidates.extend(self.stub_servers(user, room_id).await?);
        if let Some(server) = room_id.server_name().filter(|s| *s != self.deps.server_name) {
            candidates.push(server.to_owned());
        }
        let mut seen = BTreeSet::new();
        candidates.retain(|s| seen.insert(s.clone()));
        candidates.truncate(MAX_FEDERATION_JOIN_SERVERS);
        if candidates.is_empty() {
            return Err(Error::NotFound(
                "this server does not know that room, and no server to join it through was named".into(),
            ));
        }
        let mut last_error = None;
        for server in &candidates {
            match self.join_through(server, user, room_id, &extra_content).await {
                Ok(()) => {
                    self.deps.notifier.user(user.as_str());
                    self.deps.notifier.room(room_id.as_str());
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(server = %server, room_id = %room_id, error = %e, "joining through a server failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one candidate was tried"))
    }

    async fn join_through(&self, server: &ServerName, user: &UserId, room_id: &RoomId, extra: &JsonValue) -> Result<(), Error> {
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = crate::rooms::SUPPORTED_ROOM_VERSIONS.to_vec();
        let made = self.deps.federation.send(server, request).await?;
        let room_version = made.room_version.unwrap_or(RoomVersionId::V1);
        if !crate::rooms::SUPPORTED_ROOM_VERSIONS.contains(&room_version) {
            return Err(Error::UnsupportedRoomVersion(format!(
                "the room is of version {room_version}, which this server does not support"
            )));
        }
        let rules = rules_of(&room_version)?;
        let join = self.sign_made(&made.event, &rules, user, room_id, MembershipState::Join, extra)?;
        let raw = raw_json(&join.json)?;
        let answer = self
            .deps
            .federation
            .send(server, create_join_event::v2::Request::new(room_id.to_owned(), join.event_id.clone(), raw))
            .await?;
        let answer = answer.room_state;
        if answer.state.len() > MAX_JOIN_STATE_EVENTS {
            return Err(Error::TooLarge(format!("{server} answered with more state than this server takes at once")));
        }
        // The resident server's copy of the join may carry its signature
        // too (restricted joins); ours is the one we signed.
        let mut state = Vec::with_capacity(answer.state.len());
        for raw in &answer.state {
            let pdu = self.check_pdu(&room_version, raw).await?;
            if pdu.room_id_or_derived()? != room_id {
                return Err(Error::UpstreamFailed(format!("{server} answered with an event of another room")));
            }
            if pdu.state_key.is_some() {
                state.push(pdu);
            }
        }
        let state_map: BTreeMap<(StateEventType, String), Pdu> = state
            .iter()
            .map(|p| {
                ((StateEventType::from(p.event_type.to_string().as_str()), p.state_key.clone().unwrap_or_default()), p.clone())
            })
            .collect();
        let create = state_map
            .get(&(StateEventType::RoomCreate, String::new()))
            .ok_or_else(|| Error::UpstreamFailed(format!("{server} answered without the room's create event")))?
            .clone();
        // The join must be allowed by the state the room is in.
        pdu::authorize(&rules, &join, &state_map)?;
        let mut ordered: Vec<&Pdu> = state_map.values().collect();
        ordered.sort_by_key(|p| (p.event_id != create.event_id, u64::from(p.depth), p.event_id.clone()));
        let mut events: Vec<_> = ordered.into_iter().map(|p| new_event(p, room_id, None, Vec::new())).collect();
        events.push(new_event(&join, room_id, None, Vec::new()));
        let room = NewRoom {
            room_id: room_id.to_string(),
            room_version,
            creator: create.sender.to_string(),
            created_ts: create.origin_server_ts.get().into(),
        };
        // The room's history before the join is fetched when a reader
        // pages back to it.
        match self.deps.rooms.create_room(room.clone(), events.clone()).await {
            Ok(_) => self.deps.history.open(room_id, &join).await,
            Err(StoreError::RoomIdTaken) => match self.deps.rooms.replace_stub_room(room, events).await {
                // Known only through an invite: now known whole.
                Ok(_) => self.deps.history.open(room_id, &join).await,
                // Known already (a user of ours joined meanwhile, or left
                // before): the join goes through the write path.
                Err(StoreError::UnknownRoom) => self.deps.writer.append_received(room_id, &join).await.map(|_| ()),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    // ----- shared -----

    /// Signs the membership event a resident server made for `user`
    /// (`make_join`, `make_knock`): checked to be `user`'s own membership
    /// in `room_id`, its `membership` set to `membership`, `extra` content
    /// (reason, display name) added.
    pub(super) fn sign_made(
        &self,
        made: &RawJsonValue,
        rules: &chancery_proto::ruma::room_version_rules::RoomVersionRules,
        user: &UserId,
        room_id: &RoomId,
        membership: MembershipState,
        extra: &JsonValue,
    ) -> Result<Pdu, Error> {
        let mut template: CanonicalJsonObject = serde_json::from_str(made.get())
            .map_err(|e| Error::UpstreamFailed(format!("the resident server made a bad {membership}: {e}")))?;
        if !is_template_for(&template, user, room_id) {
            return Err(Error::UpstreamFailed(format!("the resident server made a {membership} for something else")));
        }
        let mut content = match template.remove("content") {
            Some(CanonicalJsonValue::Object(content)) => content,
            _ => CanonicalJsonObject::new(),
        };
        content.insert("membership".into(), CanonicalJsonValue::String(membership.to_string()));
        if let JsonValue::Object(extra) = extra {
            for (key, value) in extra {
                if key != "membership"
                    && let Ok(value) = CanonicalJsonValue::try_from(value.clone())
                {
                    content.insert(key.clone(), value);
                }
            }
        }
        template.insert("content".into(), CanonicalJsonValue::Object(content));
        Ok(pdu::sign_template(
            template,
            rules,
            self.deps.clock.now_ms(),
            &self.deps.server_name,
            self.deps.federation.signing_key(),
        )?)
    }

    /// A room this server is joined to (others answer 404, as Synapse does).
    /// 403 unless the room's server ACL lets `origin` in (spec "Server
    /// Access Control Lists").
    async fn ensure_acl(&self, room_id: &RoomId, origin: &ServerName) -> Result<(), Error> {
        if !server_allowed_in_room(&*self.deps.rooms, room_id, origin).await? {
            return Err(Error::Forbidden(format!("the room's server ACL denies {origin}")));
        }
        Ok(())
    }

    async fn joined_room(&self, room_id: &RoomId) -> Result<chancery_store::RoomInfo, Error> {
        let info = self
            .deps
            .rooms
            .room(room_id.as_str())
            .await?
            .ok_or_else(|| Error::NotFound("this server is not in that room".into()))?;
        let local_joined = self
            .deps
            .rooms
            .members_of_room(room_id.as_str())
            .await?
            .into_iter()
            .any(|m| m.membership == MembershipState::Join && m.user_id.ends_with(&format!(":{}", self.deps.server_name)));
        if !local_joined {
            return Err(Error::NotFound("this server is not in that room".into()));
        }
        self.ensure_federated(room_id).await?;
        Ok(info)
    }

    /// Rooms created with `m.federate: false` stay on this server: no other
    /// server joins them or is invited to them.
    async fn ensure_federated(&self, room_id: &RoomId) -> Result<(), Error> {
        let create =
            self.deps.rooms.current_state_events(room_id.as_str(), &[("m.room.create".to_owned(), String::new())]).await?;
        let local_only = create
            .first()
            .and_then(|e| serde_json::from_str::<JsonValue>(&e.json).ok())
            .is_some_and(|e| e["content"]["m.federate"] == JsonValue::Bool(false));
        if local_only {
            return Err(Error::Forbidden("this room does not federate (m.federate is false)".into()));
        }
        Ok(())
    }

    /// Steps 1–3 of the checks on a received PDU: size, format, signatures
    /// (keys fetched as needed), content hash.
    pub(super) async fn check_pdu(&self, room_version: &RoomVersionId, raw: &RawJsonValue) -> Result<Pdu, Error> {
        self.deps.federation.check_pdu(room_version, raw).await
    }

    /// The auth chain of events (their `auth_events`, transitively), as
    /// stored (id, JSON), bounded by [`MAX_JOIN_STATE_EVENTS`].
    async fn auth_chain<'a>(&self, events: impl Iterator<Item = &'a str>) -> Result<Vec<(String, String)>, Error> {
        let mut todo: Vec<String> = Vec::new();
        for json in events {
            todo.extend(auth_events_of(json));
        }
        let mut seen = BTreeSet::new();
        let mut chain = Vec::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if seen.len() > MAX_JOIN_STATE_EVENTS {
                return Err(Error::TooLarge("the room's auth chain is larger than this server hands out at once".into()));
            }
            if let Some(event) = self.deps.rooms.event(&id).await? {
                todo.extend(auth_events_of(&event.json));
                chain.push((event.event_id, event.json));
            }
        }
        Ok(chain)
    }
}

/// Whether the room's server ACL (if any) lets `server` take part.
pub(crate) async fn server_allowed_in_room(rooms: &dyn RoomStore, room_id: &RoomId, server: &ServerName) -> Result<bool, Error> {
    let acl = rooms.current_state_events(room_id.as_str(), &[("m.room.server_acl".to_owned(), String::new())]).await?;
    Ok(match acl.first().and_then(|e| serde_json::from_str::<JsonValue>(&e.json).ok()) {
        Some(event) => super::policy::room_acl_allows(&event["content"], server),
        None => true,
    })
}

/// Whether a `make_join`/`make_leave` template is a membership event of
/// `user` about themselves in `room_id`.
pub(super) fn is_template_for(template: &CanonicalJsonObject, user: &UserId, room_id: &RoomId) -> bool {
    let is = |key: &str, value: &str| matches!(template.get(key), Some(CanonicalJsonValue::String(v)) if v == value);
    is("type", "m.room.member")
        && is("sender", user.as_str())
        && is("state_key", user.as_str())
        && is("room_id", room_id.as_str())
}

/// Whether `pdu` is a membership event of `membership` that one of
/// `origin`'s users sent about themselves in `room_id`.
fn is_own_membership(pdu: &Pdu, origin: &ServerName, room_id: &RoomId, membership: MembershipState) -> bool {
    let found = pdu.content_json().get("membership").and_then(JsonValue::as_str).map(MembershipState::from);
    pdu.event_type.to_string() == "m.room.member"
        && pdu.state_key.as_deref() == Some(pdu.sender.as_str())
        && found == Some(membership)
        && pdu.sender.server_name() == origin
        && pdu.room_id.as_deref() == Some(room_id)
}

fn auth_events_of(json: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct AuthEvents {
        #[serde(default)]
        auth_events: Vec<String>,
    }
    serde_json::from_str::<AuthEvents>(json).map(|a| a.auth_events).unwrap_or_default()
}

fn room_id_of(raw: &RawJsonValue) -> Option<OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct RoomOf {
        room_id: OwnedRoomId,
    }
    serde_json::from_str::<RoomOf>(raw.get()).ok().map(|r| r.room_id)
}

pub(super) fn raw_json(json: &str) -> Result<Box<RawJsonValue>, Error> {
    RawJsonValue::from_string(json.to_owned()).map_err(|e| Error::Internal(format!("stored event JSON: {e}")))
}
