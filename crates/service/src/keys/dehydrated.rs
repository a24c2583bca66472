//! Dehydrated devices (MSC3814, `org.matrix.msc3814.v1`): a device whose
//! Olm account the client stored encrypted on the server, so that
//! messages sent while none of the user's devices is online are still
//! encrypted to a device of theirs. A new device of the user rehydrates
//! it: downloads `device_data`, decrypts it with a key from secret
//! storage, and reads the messages queued for it. One per user; a new one
//! replaces the old one with its keys and inbox.

use chancery_proto::limits::{
    MAX_DEHYDRATED_DEVICE_DATA_BYTES, MAX_DEVICE_DISPLAY_NAME_BYTES, MAX_DEVICE_ID_BYTES, MAX_SYNC_TO_DEVICE_EVENTS,
};
use chancery_store::{NewDevice, TokenPair};
use serde_json::{Value as JsonValue, json};

use super::sync::to_device_event;
use super::{KEY_LIMITS, Keys};
use crate::nul::refuse_nul_in_json;
use crate::tokens;
use crate::{AuthedUser, Error};

/// What a client uploads as its dehydrated device.
pub struct NewDehydratedDevice<'a> {
    pub device_id: &'a str,
    pub display_name: Option<&'a str>,
    pub device_data: &'a JsonValue,
    pub device_keys: &'a str,
    pub one_time_keys: &'a [(String, String)],
    pub fallback_keys: &'a [(String, String)],
}

impl Keys {
    /// `PUT /dehydrated_device`: stores the device, its keys and data,
    /// replacing the user's previous one.
    pub async fn put_dehydrated_device(&self, user: &AuthedUser, new: NewDehydratedDevice<'_>) -> Result<(), Error> {
        let user_id = user.user_id.as_str();
        if new.device_id.is_empty() || new.device_id.len() > MAX_DEVICE_ID_BYTES {
            return Err(Error::InvalidParam(format!("device ids are 1 to {MAX_DEVICE_ID_BYTES} bytes")));
        }
        if new.display_name.is_some_and(|n| n.len() > MAX_DEVICE_DISPLAY_NAME_BYTES) {
            return Err(Error::InvalidParam(format!("device names are at most {MAX_DEVICE_DISPLAY_NAME_BYTES} bytes")));
        }
        if new.device_id == user.device_id {
            return Err(Error::InvalidParam("a dehydrated device needs a device id of its own".into()));
        }
        if !new.device_data.is_object() {
            return Err(Error::BadJson("device_data must be a JSON object".into()));
        }
        refuse_nul_in_json(new.device_data, "device_data")?;
        let device_data = new.device_data.to_string();
        if device_data.len() > MAX_DEHYDRATED_DEVICE_DATA_BYTES {
            return Err(Error::TooLarge(format!("device_data is at most {MAX_DEHYDRATED_DEVICE_DATA_BYTES} bytes")));
        }
        let keys =
            self.checked_upload(user_id, new.device_id, Some(new.device_keys), new.one_time_keys, new.fallback_keys).await?;
        // Tokens nobody is given: the device is never logged in to.
        let unheld = || tokens::hash(&tokens::generate(self.deps.entropy.as_ref(), "cha_"));
        let device = NewDevice {
            user_id: user_id.to_owned(),
            device_id: new.device_id.to_owned(),
            display_name: Some(new.display_name.unwrap_or("Dehydrated device").to_owned()),
            tokens: TokenPair { access_token_hash: unheld(), access_expires_ts: None, refresh_token_hash: None },
            now_ts: self.deps.clock.now_ms(),
        };
        self.deps.keys.put_dehydrated_device(device, &device_data, keys, KEY_LIMITS, self.deps.max_devices_per_user).await?;
        self.deps.device_lists.changed(user_id).await;
        Ok(())
    }

    /// `GET /dehydrated_device`.
    pub async fn dehydrated_device(&self, user: &AuthedUser) -> Result<JsonValue, Error> {
        let device = self
            .deps
            .keys
            .dehydrated_device(user.user_id.as_str())
            .await?
            .ok_or_else(|| Error::NotFound("no dehydrated device".into()))?;
        let data: JsonValue =
            serde_json::from_str(&device.device_data).map_err(|e| Error::Internal(format!("stored device_data: {e}")))?;
        Ok(json!({ "device_id": device.device_id, "device_data": data }))
    }

    /// `DELETE /dehydrated_device`.
    pub async fn delete_dehydrated_device(&self, user: &AuthedUser) -> Result<String, Error> {
        let deleted = self.deps.keys.delete_dehydrated_device(user.user_id.as_str()).await?;
        let device_id = deleted.ok_or_else(|| Error::NotFound("no dehydrated device".into()))?;
        self.deps.device_lists.changed(user.user_id.as_str()).await;
        Ok(device_id)
    }

    /// `POST /dehydrated_device/{deviceId}/events`: the dehydrated
    /// device's inbox after `next_batch`; what `next_batch` acknowledged
    /// is deleted.
    pub async fn dehydrated_device_events(
        &self,
        user: &AuthedUser,
        device_id: &str,
        next_batch: Option<&str>,
    ) -> Result<JsonValue, Error> {
        let user_id = user.user_id.as_str();
        let current = self.deps.keys.dehydrated_device(user_id).await?;
        if current.is_none_or(|d| d.device_id != device_id) {
            return Err(Error::NotFound("no dehydrated device of this id".into()));
        }
        let after = match next_batch {
            None => 0,
            Some(token) => token.parse::<u64>().map_err(|_| Error::InvalidParam("malformed next_batch".into()))?,
        };
        let inbox = self.deps.keys.to_device_inbox(user_id, device_id, after, i64::MAX as u64, MAX_SYNC_TO_DEVICE_EVENTS).await?;
        if inbox.acknowledged_waiting {
            self.deps.keys.delete_to_device(user_id, device_id, after).await?;
        }
        let next = inbox.messages.last().map_or(after, |m| m.stream_pos);
        let events = inbox.messages.into_iter().map(to_device_event).collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "events": events, "next_batch": next.to_string() }))
    }
}
