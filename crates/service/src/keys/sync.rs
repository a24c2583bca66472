//! The encryption part of a `/sync` answer: the device's to-device inbox
//! (`to_device`), the device lists to fetch again (`device_lists`), and
//! the device's key counts (`device_one_time_keys_count`,
//! `device_unused_fallback_key_types`).

use std::collections::BTreeMap;

use chancery_proto::limits::MAX_SYNC_TO_DEVICE_EVENTS;
use chancery_store::{DeviceListUpdates, ToDeviceEvent};
use serde_json::{Value as JsonValue, json};

use super::Keys;
use crate::stream_token::StreamToken;
use crate::{AuthedUser, Error};

/// Whether membership changes of the answer's rooms can have changed whose
/// device lists the user tracks, so the store is asked about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipNews {
    /// No member or encryption event in the gap of any of the user's rooms.
    None,
    /// Some may have (or the pass cannot tell).
    Possible,
}

/// What one sync answer carries of encryption.
#[derive(Debug, Clone, Default)]
pub struct KeysSyncPart {
    pub to_device: Vec<JsonValue>,
    /// The to-device position the answer's token carries.
    pub to_device_up_to: u64,
    /// Messages past `to_device_up_to` wait for the next answer.
    pub more_to_device: bool,
    pub device_lists: DeviceListUpdates,
    pub one_time_key_counts: BTreeMap<String, u64>,
    pub unused_fallback_key_types: Vec<String>,
}

impl KeysSyncPart {
    /// Whether the answer has news for the client (key counts alone are
    /// not: they change with every claim and would wake every sync).
    pub fn has_news(&self) -> bool {
        !self.to_device.is_empty() || !self.device_lists.changed.is_empty() || !self.device_lists.left.is_empty()
    }

    /// The answer's `to_device`, `device_lists` and key-count fields.
    pub fn write_into(self, body: &mut JsonValue) {
        let mut counts = self.one_time_key_counts;
        // Clients top up one-time keys when the count is low; an absent
        // count reads as "unknown" to some, so zero is said.
        counts.entry("signed_curve25519".into()).or_insert(0);
        body["to_device"] = json!({ "events": self.to_device });
        body["device_lists"] = json!({ "changed": self.device_lists.changed, "left": self.device_lists.left });
        body["device_one_time_keys_count"] = json!(counts);
        body["device_unused_fallback_key_types"] = json!(self.unused_fallback_key_types);
    }
}

/// A stored to-device message as a client sees it.
pub(super) fn to_device_event(m: ToDeviceEvent) -> Result<JsonValue, Error> {
    let content: JsonValue =
        serde_json::from_str(&m.content).map_err(|e| Error::Internal(format!("stored to-device content: {e}")))?;
    Ok(json!({ "type": m.event_type, "sender": m.sender, "content": content }))
}

/// Where the answer's to-device token stops: at the cut if everything up
/// to it was delivered, else at the last message delivered (the client
/// comes back at once for the rest).
pub(super) fn to_device_reach(delivered: &[u64], limit: usize, cut: u64) -> (u64, bool) {
    match delivered.last() {
        Some(&last) if delivered.len() >= limit => (last, last < cut),
        _ => (cut, false),
    }
}

impl Keys {
    /// The device's part of one sync pass, from the client's token to the
    /// pass's cut: its inbox and key counts (`device_lists` are left
    /// empty, for [`Keys::sync_device_lists`]). Messages the token
    /// acknowledged are deleted first (spec: the server removes them once
    /// the client's next sync carries the token that delivered them).
    pub async fn sync_inbox(
        &self,
        user: &AuthedUser,
        since: Option<StreamToken>,
        cut: StreamToken,
    ) -> Result<KeysSyncPart, Error> {
        let (user_id, device_id) = (user.user_id.as_str(), user.device_id.as_str());
        let acknowledged = since.map_or(0, |s| s.to_device.min(cut.to_device));
        // One read (every sync of every device makes it), then the
        // acknowledged messages' deletion when there are any.
        let state =
            self.deps.keys.device_sync_state(user_id, device_id, acknowledged, cut.to_device, MAX_SYNC_TO_DEVICE_EVENTS).await?;
        if state.inbox.acknowledged_waiting {
            self.deps.keys.delete_to_device(user_id, device_id, acknowledged).await?;
        }
        let (messages, one_time_key_counts, unused_fallback_key_types) =
            (state.inbox.messages, state.one_time_key_counts, state.unused_fallback_key_types);
        let positions: Vec<u64> = messages.iter().map(|m| m.stream_pos).collect();
        let (to_device_up_to, more_to_device) = to_device_reach(&positions, MAX_SYNC_TO_DEVICE_EVENTS, cut.to_device);
        let to_device = messages.into_iter().map(to_device_event).collect::<Result<_, _>>()?;
        Ok(KeysSyncPart {
            to_device,
            to_device_up_to: to_device_up_to.max(acknowledged),
            more_to_device,
            device_lists: DeviceListUpdates::default(),
            one_time_key_counts,
            unused_fallback_key_types,
        })
    }

    /// The users whose device lists moved between the client's token and
    /// the pass's cut (none on an initial sync). The store is asked only
    /// when the device-list stream moved or the answer's rooms may carry
    /// membership changes.
    pub async fn sync_device_lists(
        &self,
        user: &AuthedUser,
        since: Option<StreamToken>,
        cut: StreamToken,
        membership_news: MembershipNews,
    ) -> Result<DeviceListUpdates, Error> {
        let Some(s) = since else { return Ok(DeviceListUpdates::default()) };
        let keys = (s.device_lists, cut.device_lists.max(s.device_lists));
        let events = (membership_news == MembershipNews::Possible && s.events < cut.events).then_some((s.events, cut.events));
        if keys.0 == keys.1 && events.is_none() {
            return Ok(DeviceListUpdates::default());
        }
        Ok(self.deps.keys.device_list_updates(user.user_id.as_str(), keys, events).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_to_device_token_stops_at_the_last_message_only_when_cut_short() {
        // Nothing, or fewer than the limit: everything up to the cut.
        assert_eq!(to_device_reach(&[], 3, 10), (10, false));
        assert_eq!(to_device_reach(&[4, 7], 3, 10), (10, false));
        // A full answer: up to its last message, more may follow.
        assert_eq!(to_device_reach(&[4, 7, 8], 3, 10), (8, true));
        // A full answer that ends at the cut: nothing more.
        assert_eq!(to_device_reach(&[4, 7, 10], 3, 10), (10, false));
    }
}
