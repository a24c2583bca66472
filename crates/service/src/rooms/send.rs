//! The write path: build, authorise, persist, wake syncs.

use chancery_core::pdu::{self, EventDraft, Pdu};
use chancery_proto::limits::{MAX_APPEND_RETRIES, MAX_EVENT_TYPE_BYTES, MAX_STATE_KEY_BYTES, MAX_TXN_ID_BYTES};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{EventId, OwnedEventId, RoomId};
use chancery_store::{NewEvent, NewNotification, StoreError, TxnKey};
use serde_json::Value as JsonValue;

use std::task::Poll;

use super::{PendingAppend, power_levels, rules_of};
use crate::{AuthedUser, Error, Services, now_ms};

pub(crate) fn new_event(pdu: &Pdu, room_id: &RoomId, txn: Option<TxnKey>, notifications: Vec<NewNotification>) -> NewEvent {
    let membership = (pdu.event_type.to_string() == "m.room.member")
        .then(|| pdu.content_json().get("membership").and_then(|m| m.as_str()).map(MembershipState::from))
        .flatten();
    NewEvent {
        event_id: pdu.event_id.to_string(),
        room_id: room_id.to_string(),
        event_type: pdu.event_type.to_string(),
        state_key: pdu.state_key.clone(),
        sender: pdu.sender.to_string(),
        origin_server_ts: pdu.origin_server_ts.get().into(),
        depth: pdu.depth.into(),
        json: pdu.json.clone(),
        membership,
        redacts: pdu.redacts_target().map(|e| e.to_string()),
        txn,
        search_text: search_text(pdu),
        notifications,
        // Set by `append` once the relation has been checked.
        relates_to: None,
    }
}

/// The text server-side search indexes (spec `/search` keys). Encrypted
/// events have none of these fields, so they are never indexed.
fn search_text(pdu: &Pdu) -> Vec<(String, String)> {
    let field = match pdu.event_type.to_string().as_str() {
        "m.room.message" => "body",
        "m.room.name" => "name",
        "m.room.topic" => "topic",
        _ => return Vec::new(),
    };
    let content = pdu.content_json();
    match content.get(field).and_then(|v| v.as_str()) {
        Some(text) if !text.is_empty() => vec![(format!("content.{field}"), text.to_owned())],
        _ => Vec::new(),
    }
}

pub(crate) fn check_type_and_key(event_type: &str, state_key: Option<&str>) -> Result<(), Error> {
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(Error::InvalidParam(format!("event types are 1 to {MAX_EVENT_TYPE_BYTES} bytes")));
    }
    if state_key.is_some_and(|k| k.len() > MAX_STATE_KEY_BYTES) {
        return Err(Error::InvalidParam(format!("state keys are at most {MAX_STATE_KEY_BYTES} bytes")));
    }
    Ok(())
}

impl Services {
    /// Builds `draft` on the room's current extremities and state,
    /// authorises it and persists it. Returns the event id and position.
    pub(crate) async fn append(
        &self,
        room_id: &RoomId,
        draft: EventDraft,
        txn: Option<TxnKey>,
    ) -> Result<(OwnedEventId, u64), Error> {
        self.append_checked(room_id, draft, txn, false).await
    }

    /// [`Self::append`] for a sender who must be joined to the room, checked
    /// on the state the event is authorised against (no read of its own).
    /// Rooms the server does not know answer as rooms the sender is not in.
    async fn append_as_member(
        &self,
        room_id: &RoomId,
        draft: EventDraft,
        txn: Option<TxnKey>,
    ) -> Result<(OwnedEventId, u64), Error> {
        self.append_checked(room_id, draft, txn, true).await
    }

    async fn append_checked(
        &self,
        room_id: &RoomId,
        mut draft: EventDraft,
        txn: Option<TxnKey>,
        must_be_joined: bool,
    ) -> Result<(OwnedEventId, u64), Error> {
        let not_joined = || Error::Forbidden("you are not joined to this room".into());
        draft.room_id = Some(room_id.to_owned());
        let writer = self.inner.rooms.lock_for(room_id);
        let mut guard = Some(writer.lock.lock().await);
        if let Some(txn) = &txn
            && let Some(existing) = self.event_of_txn(txn, room_id).await?
        {
            return Ok((existing, 0));
        }
        // The relation's parent is looked at before the event is built:
        // only members may learn what it says of the room's events.
        if must_be_joined && super::relations::declared(&draft.content).is_some() {
            self.ensure_joined(room_id, &draft.sender).await?;
        }
        // Under the lock: no other send of this node can record a relation
        // that would change the verdict (duplicate annotations).
        let relation = self.relation_to_record(room_id, &draft).await?;
        // Pipelined: the lock is released once the write is queued, and the
        // room's next event is built on this one while it is committed, so
        // a busy room's messages share commits instead of waiting for one
        // each. Only for events that change nothing the next one is checked
        // against: no state, no redaction, no recorded relation. The others
        // wait for the pending one and hold the lock until committed.
        let pipelined = draft.state_key.is_none() && draft.redacts.is_none() && relation.is_none();
        if !pipelined {
            writer.drain().await;
        }
        for _ in 0..MAX_APPEND_RETRIES {
            if guard.is_none() {
                guard = Some(writer.lock.lock().await);
                // The pending event this one was built on failed: start
                // again from what the store holds.
                writer.drain().await;
            }
            // The pending event first: once it is settled (and forgotten),
            // the room read after this sees it committed.
            let pending = writer.pending().filter(|_| pipelined);
            // Built on a pending event, the room's version (which never
            // changes) is all that is needed of the room: no read.
            let (room_version, extremities, depth) = match (pending, writer.room_version.get()) {
                (Some(pending), Some(version)) => (version.clone(), vec![pending.event_id], pending.depth + 1),
                (pending, _) => {
                    let info = self
                        .store()
                        .room(room_id.as_str())
                        .await?
                        .ok_or_else(|| if must_be_joined { not_joined() } else { Error::NotFound("unknown room".into()) })?;
                    let _ = writer.room_version.set(info.room_version.clone());
                    match pending {
                        Some(pending) => (info.room_version, vec![pending.event_id], pending.depth + 1),
                        None => (info.room_version, info.forward_extremities, info.max_depth + 1),
                    }
                }
            };
            let rules = rules_of(&room_version)?;
            // Only the state the auth rules look at is loaded, so a send
            // costs the same in a room of 5 or 50,000 members.
            let auth_types = pdu::auth_types(&draft, &rules)?;
            // The create event is always needed: v12 rooms do not list it
            // in auth_events, but the auth rules still read it.
            let mut keys = auth_types.clone();
            keys.push((StateEventType::RoomCreate, String::new()));
            let state = self.state_subset(room_id, &keys).await?;
            // The sender's membership is among the auth state of every event.
            if must_be_joined {
                let member = state.get(&(StateEventType::RoomMember, draft.sender.to_string()));
                if member.and_then(|m| m.content_json().get("membership").and_then(|m| m.as_str()).map(MembershipState::from))
                    != Some(MembershipState::Join)
                {
                    return Err(not_joined());
                }
            }
            let auth_events: Vec<OwnedEventId> =
                auth_types.iter().filter_map(|key| state.get(key)).map(|p| p.event_id.clone()).collect();
            let prev: Vec<OwnedEventId> = extremities
                .iter()
                .map(|e| EventId::parse(e.as_str()))
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Internal(e.to_string()))?;
            let built =
                pdu::build_pdu(&draft, &rules, &prev, &auth_events, depth, now_ms(), self.server_name(), self.signing_key())?;
            pdu::authorize(&rules, &built, &state)?;
            let notifications = self.evaluate_push(room_id, &built, &rules, &state).await?;
            let mut event = new_event(&built, room_id, txn.clone(), notifications);
            event.relates_to = relation.clone();
            let mut write = self.store().append_event(event, &extremities);
            let result = if pipelined {
                // The first poll queues the write (`RoomStore::append_event`).
                let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
                let (settled, settled_rx) = tokio::sync::watch::channel(false);
                let event_id = built.event_id.to_string();
                writer.set_pending(Some(PendingAppend { event_id: event_id.clone(), depth, settled: settled_rx }));
                drop(guard.take());
                let result = match first {
                    Poll::Ready(result) => result,
                    Poll::Pending => write.await,
                };
                writer.settle(&event_id);
                let _ = settled.send(true);
                result
            } else {
                write.await
            };
            match result {
                // The store woke the syncs the event concerns at its commit.
                Ok(pos) => return Ok((built.event_id, pos)),
                Err(StoreError::StaleExtremities) => continue,
                Err(StoreError::TransactionIdUsed) => {
                    let txn = txn.as_ref().expect("txn conflict only with a txn");
                    let existing =
                        self.event_of_txn(txn, room_id).await?.ok_or_else(|| Error::Internal("txn vanished".into()))?;
                    return Ok((existing, 0));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::LimitExceeded { retry_after_ms: 100 })
    }

    /// The event a transaction id already made: a retried request answers
    /// with it. An id the device already used in another room is refused
    /// (clients make them unique per access token), rather than answered
    /// with that room's event.
    async fn event_of_txn(&self, txn: &TxnKey, room_id: &RoomId) -> Result<Option<OwnedEventId>, Error> {
        let Some(existing) = self.store().event_for_txn(txn).await? else { return Ok(None) };
        if self.store().event(&existing).await?.is_some_and(|e| e.room_id != room_id.as_str()) {
            return Err(Error::InvalidParam("this transaction id was already used in another room".into()));
        }
        Ok(Some(EventId::parse(existing).map_err(|e| Error::Internal(e.to_string()))?))
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
        if txn_id.is_empty() || txn_id.len() > MAX_TXN_ID_BYTES {
            return Err(Error::InvalidParam("bad transaction id".into()));
        }
        if !content.is_object() {
            return Err(Error::BadJson("content must be a JSON object".into()));
        }
        if event_type == "m.room.redaction" {
            return Err(Error::InvalidParam("use /redact to redact events".into()));
        }
        let draft = EventDraft {
            room_id: None,
            sender: user.user_id.clone(),
            event_type: event_type.to_owned(),
            state_key: None,
            content,
            redacts: None,
        };
        let txn = TxnKey { user_id: user.user_id.to_string(), device_id: user.device_id.clone(), txn_id: txn_id.to_owned() };
        Ok(self.append_as_member(room_id, draft, Some(txn)).await?.0)
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
        self.ensure_joined(room_id, &user.user_id).await?;
        if event_type == "m.room.canonical_alias" && state_key.is_empty() {
            self.check_canonical_alias(room_id, &content).await?;
        }
        let draft = EventDraft {
            room_id: None,
            sender: user.user_id.clone(),
            event_type: event_type.to_owned(),
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
        };
        Ok(self.append(room_id, draft, None).await?.0)
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
        if txn_id.is_empty() || txn_id.len() > MAX_TXN_ID_BYTES {
            return Err(Error::InvalidParam("bad transaction id".into()));
        }
        self.ensure_joined(room_id, &user.user_id).await?;
        let event = self.store().event(target.as_str()).await?.filter(|e| e.room_id == room_id.as_str());
        let Some(event) = event else {
            return Err(Error::NotFound("no such event in this room".into()));
        };
        let info = self.store().room(room_id.as_str()).await?.ok_or_else(|| Error::NotFound("unknown room".into()))?;
        let rules = rules_of(&info.room_version)?;
        // The auth rules let anyone send a redaction event; whether it takes
        // effect depends on the redact power level, unless the sender
        // redacts their own event (spec "Redactions", client behaviour).
        if event.sender != user.user_id.as_str() {
            let keys = [(StateEventType::RoomCreate, String::new()), (StateEventType::RoomPowerLevels, String::new())];
            let state = self.state_subset(room_id, &keys).await?;
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
        let draft = EventDraft {
            room_id: None,
            sender: user.user_id.clone(),
            event_type: "m.room.redaction".into(),
            state_key: None,
            content: JsonValue::Object(content),
            redacts: Some(target.to_owned()),
        };
        let txn = TxnKey {
            user_id: user.user_id.to_string(),
            // Redactions have their own transaction ids: the namespace goes
            // in the device part, which clients cannot put control
            // characters in, so no `/send` id can collide with it.
            device_id: format!("{}\u{1}redact", user.device_id),
            txn_id: txn_id.to_owned(),
        };
        Ok(self.append(room_id, draft, Some(txn)).await?.0)
    }
}
