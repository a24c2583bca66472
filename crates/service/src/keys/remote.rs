//! End-to-end encryption across servers (server-server API "End-to-End
//! Encryption", "Send-to-device messaging", "Device Management"): the keys
//! of other servers' users asked of their servers, this server's users'
//! keys answered to others, to-device messages both ways, and other
//! servers' device-list changes turned into local device-list news.

use std::collections::BTreeMap;

use chancery_proto::limits::{MAX_KEY_CLAIMS, MAX_KEY_QUERY_USERS, MAX_TO_DEVICE_INBOX};
use chancery_proto::ruma::api::federation::keys::{claim_keys, get_keys};
use chancery_proto::ruma::api::federation::transactions::edu::Edu;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId};
use chancery_store::{RemoteUserKeys, ToDeviceMessage};
use serde_json::{Map, Value as JsonValue, json};

use super::Keys;
use crate::Error;

/// How long cached keys of another server's user are used at most, even
/// without a change announced (a missed announcement heals by then).
const REMOTE_KEYS_MAX_AGE_MS: u64 = 24 * 60 * 60 * 1000;

/// Users of other servers whose keys are cached (the least recently
/// fetched go past it).
const MAX_CACHED_REMOTE_USERS: usize = 100_000;

/// Puts one user's keys (`device_keys`, `master_key`, `self_signing_key`
/// as a server answered them) into a `/keys/query` answer.
fn merge_user_keys(answer: &mut JsonValue, user: &UserId, keys: &JsonValue) {
    if let Some(devices) = keys.get("device_keys").and_then(JsonValue::as_object) {
        let mut entry = answer["device_keys"][user.as_str()].as_object().cloned().unwrap_or_default();
        entry.extend(devices.iter().map(|(d, k)| (d.clone(), k.clone())));
        answer["device_keys"][user.as_str()] = JsonValue::Object(entry);
    }
    for (from, to) in [("master_key", "master_keys"), ("self_signing_key", "self_signing_keys")] {
        if let Some(key) = keys.get(from) {
            answer[to][user.as_str()] = key.clone();
        }
    }
}

/// Users of other servers, by server, with what is wanted of each.
pub(super) type ByServer<T> = BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>;

impl Keys {
    /// Merges the device and cross-signing keys other servers hold of
    /// their users into a `/keys/query` answer; a server that fails is
    /// named in `failures`. Users asked for all their devices are answered
    /// from the cache when their entry still holds (their device list has
    /// not moved since, and it is younger than [`REMOTE_KEYS_MAX_AGE_MS`]);
    /// what a server answers is cached for users joined to a room here
    /// (their server then tells this one when their devices change).
    pub(super) async fn query_remote(&self, wanted: ByServer<Vec<OwnedDeviceId>>, answer: &mut JsonValue) {
        let fresh_after = self.deps.clock.now_ms().saturating_sub(REMOTE_KEYS_MAX_AGE_MS);
        for (server, mut users) in wanted {
            let whole: Vec<String> = users.iter().filter(|(_, devices)| devices.is_empty()).map(|(u, _)| u.to_string()).collect();
            match self.deps.remote_keys.cached_remote_keys(&whole, fresh_after).await {
                Ok(cached) => {
                    for (user, json) in cached {
                        if let (Ok(user), Ok(keys)) = (UserId::parse(&user), serde_json::from_str::<JsonValue>(&json)) {
                            merge_user_keys(answer, &user, &keys);
                            users.remove(&user);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading cached keys of other servers' users failed"),
            }
            if users.is_empty() {
                continue;
            }
            // Read before the query goes out: a change announced while it
            // is in flight leaves the cached answer unused.
            let positions = if whole.is_empty() {
                Vec::new()
            } else {
                self.deps.remote_keys.remote_device_list_positions(&whole).await.unwrap_or_default()
            };
            match self.deps.federation.send(&server, get_keys::v1::Request::new(users.clone())).await {
                Ok(found) => {
                    let mut by_user: BTreeMap<OwnedUserId, JsonValue> = BTreeMap::new();
                    for (user, devices) in found.device_keys {
                        let mut entry = Map::new();
                        for (device, keys) in devices {
                            if let Ok(keys) = keys.deserialize_as_unchecked::<JsonValue>() {
                                entry.insert(device.to_string(), keys);
                            }
                        }
                        by_user.entry(user).or_insert_with(|| json!({}))["device_keys"] = JsonValue::Object(entry);
                    }
                    for (field, keys) in [("master_key", found.master_keys), ("self_signing_key", found.self_signing_keys)] {
                        for (user, key) in keys {
                            if let Ok(key) = key.deserialize_as_unchecked::<JsonValue>() {
                                by_user.entry(user).or_insert_with(|| json!({}))[field] = key;
                            }
                        }
                    }
                    let mut cache = Vec::new();
                    for (user, keys) in &by_user {
                        // Only what was asked of this server, about its own users.
                        if user.server_name() != server || !users.contains_key(user) {
                            continue;
                        }
                        merge_user_keys(answer, user, keys);
                        let position = positions.iter().find(|(u, _)| u == user.as_str()).map(|(_, p)| *p);
                        if let Some(list_pos) = position
                            && self.joined_somewhere(user).await
                        {
                            cache.push(RemoteUserKeys { user_id: user.to_string(), keys_json: keys.to_string(), list_pos });
                        }
                    }
                    if !cache.is_empty()
                        && let Err(e) = self
                            .deps
                            .remote_keys
                            .cache_remote_keys(&cache, self.deps.clock.now_ms(), MAX_CACHED_REMOTE_USERS)
                            .await
                    {
                        tracing::warn!(error = %e, "caching keys of other servers' users failed");
                    }
                }
                Err(e) => {
                    tracing::info!(server = %server, error = %e, "a key query to another server failed");
                    answer["failures"][server.as_str()] = json!({"errcode": "M_UNKNOWN", "error": e.to_string()});
                }
            }
        }
    }

    /// Whether `user` (of another server) is joined to a room here: their
    /// server then sends this one their device-list changes.
    async fn joined_somewhere(&self, user: &UserId) -> bool {
        match self.deps.rooms.memberships_of_user(user.as_str()).await {
            Ok(memberships) => memberships.iter().any(|m| m.membership == MembershipState::Join),
            Err(_) => false,
        }
    }

    /// Merges the one-time keys other servers hand out for their users'
    /// devices into a `/keys/claim` answer.
    pub(super) async fn claim_remote(&self, wanted: ByServer<BTreeMap<OwnedDeviceId, String>>, answer: &mut JsonValue) {
        for (server, users) in wanted {
            let claims = users
                .into_iter()
                .map(|(user, devices)| {
                    (user, devices.into_iter().map(|(device, algorithm)| (device, algorithm.as_str().into())).collect())
                })
                .collect();
            match self.deps.federation.send(&server, claim_keys::v1::Request::new(claims)).await {
                Ok(found) => {
                    for (user, devices) in found.one_time_keys {
                        for (device, keys) in devices {
                            let mut entry = Map::new();
                            for (key_id, key) in keys {
                                if let Ok(key) = key.deserialize_as_unchecked::<JsonValue>() {
                                    entry.insert(key_id.to_string(), key);
                                }
                            }
                            answer["one_time_keys"][user.as_str()][device.as_str()] = JsonValue::Object(entry);
                        }
                    }
                }
                Err(e) => {
                    tracing::info!(server = %server, error = %e, "a key claim to another server failed");
                    answer["failures"][server.as_str()] = json!({"errcode": "M_UNKNOWN", "error": e.to_string()});
                }
            }
        }
    }

    /// `POST /_matrix/federation/v1/user/keys/query`: this server's users'
    /// device keys, master and self-signing keys (no user-signing keys:
    /// only their owner sees those).
    pub async fn query_for_server(&self, wanted: BTreeMap<String, Vec<String>>) -> Result<JsonValue, Error> {
        if wanted.len() > MAX_KEY_QUERY_USERS {
            return Err(Error::InvalidParam(format!("at most {MAX_KEY_QUERY_USERS} users per query")));
        }
        let local: Vec<(String, Vec<String>)> =
            wanted.into_iter().filter(|(u, _)| UserId::parse(u.as_str()).is_ok_and(|u| self.is_local(&u))).collect();
        let mut answer = self.query_local(None, local).await?;
        if let Some(answer) = answer.as_object_mut() {
            answer.remove("user_signing_keys");
            answer.remove("failures");
        }
        Ok(answer)
    }

    /// `POST /_matrix/federation/v1/user/keys/claim`: one-time keys of this
    /// server's users' devices.
    pub async fn claim_for_server(&self, wanted: BTreeMap<String, BTreeMap<String, String>>) -> Result<JsonValue, Error> {
        let count: usize = wanted.values().map(BTreeMap::len).sum();
        if count > MAX_KEY_CLAIMS {
            return Err(Error::InvalidParam(format!("at most {MAX_KEY_CLAIMS} keys per claim")));
        }
        let local = wanted.into_iter().filter(|(u, _)| UserId::parse(u.as_str()).is_ok_and(|u| self.is_local(&u))).collect();
        let mut answer = self.claim(local).await?;
        if let Some(answer) = answer.as_object_mut() {
            answer.remove("failures");
        }
        Ok(answer)
    }

    /// `GET /_matrix/federation/v1/user/devices/{userId}`: a local user's
    /// devices with their keys, and their master and self-signing keys.
    pub async fn devices_for_server(&self, user_id: &UserId, stream_id: u64) -> Result<JsonValue, Error> {
        if !self.is_local(user_id) {
            return Err(Error::NotFound("that user is not on this server".into()));
        }
        let answer = self.query_local(None, vec![(user_id.to_string(), Vec::new())]).await?;
        let devices: Vec<JsonValue> = answer["device_keys"][user_id.as_str()]
            .as_object()
            .map(|devices| {
                devices
                    .iter()
                    .map(|(device_id, keys)| {
                        let mut device = json!({"device_id": device_id, "keys": keys});
                        if let Some(name) = keys["unsigned"]["device_display_name"].as_str() {
                            device["device_display_name"] = json!(name);
                        }
                        device
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut body = json!({"user_id": user_id, "stream_id": stream_id, "devices": devices});
        for (field, from) in [("master_key", "master_keys"), ("self_signing_key", "self_signing_keys")] {
            if let Some(key) = answer[from].get(user_id.as_str()) {
                body[field] = key.clone();
            }
        }
        Ok(body)
    }

    /// The device-list, cross-signing and to-device EDUs of a
    /// transaction from `origin`. Returns how many were applied. One that
    /// is not valid or not `origin`'s to send is dropped; one this server
    /// failed to store fails the call (the transaction is then not
    /// acknowledged and `origin` sends it again: what was applied before
    /// is dropped as a repeat, to-device messages by their message id).
    pub async fn receive_edus(&self, origin: &ServerName, edus: &[Raw<Edu>]) -> Result<usize, Error> {
        let mut applied = 0;
        for raw in edus {
            let result = match raw.deserialize() {
                Ok(Edu::DeviceListUpdate(update)) => self.remote_device_list_changed(origin, &update.user_id).await,
                Ok(Edu::SigningKeyUpdate(update)) => self.remote_device_list_changed(origin, &update.user_id).await,
                Ok(Edu::DirectToDevice(direct)) => {
                    let messages = serde_json::to_value(&direct.messages).unwrap_or_default();
                    self.to_device_from(
                        origin,
                        &direct.sender,
                        direct.ev_type.to_string().as_str(),
                        direct.message_id.as_str(),
                        &messages,
                    )
                    .await
                }
                Ok(_) => continue,
                Err(e) => Err(Error::BadJson(e.to_string())),
            };
            match result {
                Ok(()) => applied += 1,
                Err(e @ (Error::Internal(_) | Error::Unavailable { .. })) => return Err(e),
                Err(e) => tracing::debug!(origin = %origin, error = %e, "an EDU was dropped"),
            }
        }
        Ok(applied)
    }

    async fn remote_device_list_changed(&self, origin: &ServerName, user_id: &UserId) -> Result<(), Error> {
        if user_id.server_name() != origin || self.is_local(user_id) {
            return Err(Error::Forbidden(format!("{origin} may not speak for {user_id}")));
        }
        self.deps.keys.note_remote_device_list_change(user_id.as_str()).await?;
        self.deps.device_lists.changed(user_id.as_str()).await;
        Ok(())
    }

    /// An `m.direct_to_device` EDU: messages from a user of `origin` to
    /// this server's users' devices (`*`: all of a user's devices).
    async fn to_device_from(
        &self,
        origin: &ServerName,
        sender: &UserId,
        event_type: &str,
        message_id: &str,
        messages: &JsonValue,
    ) -> Result<(), Error> {
        if sender.server_name() != origin {
            return Err(Error::Forbidden(format!("{origin} may not speak for {sender}")));
        }
        let mut queued = Vec::new();
        for (user_id, devices) in messages.as_object().into_iter().flatten() {
            let Ok(user) = UserId::parse(user_id.as_str()) else { continue };
            if !self.is_local(&user) {
                continue;
            }
            for (device_id, content) in devices.as_object().into_iter().flatten() {
                let device_id = (device_id != "*").then(|| device_id.clone());
                queued.push(ToDeviceMessage { user_id: user_id.clone(), device_id, content: content.to_string() });
            }
        }
        if queued.is_empty() {
            return Ok(());
        }
        let txn_id = format!("{origin}/{message_id}");
        match self.deps.keys.send_to_device(sender.as_str(), "", &txn_id, event_type, &queued, MAX_TO_DEVICE_INBOX).await {
            Ok(_) | Err(chancery_store::StoreError::TransactionIdUsed) => {
                let recipients: Vec<&str> = queued.iter().map(|m| m.user_id.as_str()).collect();
                self.deps.device_lists.to_device_queued(recipients);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
