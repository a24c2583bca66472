//! To-device messages (client-server API "Send-to-Device messaging"):
//! queued per device in one store transaction, idempotent per sending
//! device and transaction id, delivered by `/sync` (`sync.rs`) and
//! deleted once the client's next token acknowledges them.

use std::collections::BTreeSet;

use chancery_proto::limits::{
    MAX_EVENT_TYPE_BYTES, MAX_TO_DEVICE_CONTENT_BYTES, MAX_TO_DEVICE_INBOX, MAX_TO_DEVICE_MESSAGES_PER_REQUEST, MAX_TXN_ID_BYTES,
};
use chancery_proto::ruma::UserId;
use chancery_store::{StoreError, ToDeviceMessage};

use super::Keys;
use crate::nul::{refuse_nul_in_json, refuse_nul_in_param};
use crate::{AuthedUser, Error};

/// One message of a `/sendToDevice` request: the recipient user, device
/// (`None` for `*`) and the content as the client sent it: JSON text the
/// API layer already parsed once (it is stored as it came, not parsed and
/// written again: a room key shared with a big room is a thousand of
/// them).
pub struct OutgoingToDevice {
    pub user_id: String,
    pub device_id: Option<String>,
    pub content: String,
}

/// Refuses content that is not a JSON object, is too large, or holds
/// U+0000. `content` is JSON the API layer parsed, so an object starts
/// with `{`, and a NUL can only be the escape `\u0000` (parsed only then,
/// to tell it from an escaped backslash followed by `u0000`).
fn check_content(content: &str) -> Result<(), Error> {
    if !content.trim_start().starts_with('{') {
        return Err(Error::BadJson("to-device content must be a JSON object".into()));
    }
    if content.len() > MAX_TO_DEVICE_CONTENT_BYTES {
        return Err(Error::TooLarge(format!("a to-device message is at most {MAX_TO_DEVICE_CONTENT_BYTES} bytes")));
    }
    if content.contains("\\u0000") {
        let value: serde_json::Value = serde_json::from_str(content).map_err(|e| Error::BadJson(format!("not JSON: {e}")))?;
        refuse_nul_in_json(&value, "to-device messages")?;
    }
    Ok(())
}

/// The `message_id` of the `m.direct_to_device` EDUs of one request: the
/// same for a retry of it (the receiver drops the repeat by origin and
/// message id), different for another device of the same user using the
/// same transaction id (transaction ids are per device). Opaque: a hash,
/// so the device id does not travel.
fn federation_message_id(device_id: &str, txn_id: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{device_id}\0{txn_id}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

impl Keys {
    /// `PUT /sendToDevice/{eventType}/{txnId}`. A transaction id the
    /// device used before answers as the first time did, queueing
    /// nothing again. Messages for users of other servers are committed
    /// to the federation outbox (one EDU per server) before this returns;
    /// those for devices that do not exist are dropped, as Synapse does.
    pub async fn send_to_device(
        &self,
        user: &AuthedUser,
        event_type: &str,
        txn_id: &str,
        messages: Vec<OutgoingToDevice>,
    ) -> Result<(), Error> {
        if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_BYTES {
            return Err(Error::InvalidParam(format!("event types are 1 to {MAX_EVENT_TYPE_BYTES} bytes")));
        }
        if txn_id.is_empty() || txn_id.len() > MAX_TXN_ID_BYTES {
            return Err(Error::InvalidParam(format!("transaction ids are 1 to {MAX_TXN_ID_BYTES} bytes")));
        }
        refuse_nul_in_param(event_type, "event types")?;
        refuse_nul_in_param(txn_id, "transaction ids")?;
        if messages.len() > MAX_TO_DEVICE_MESSAGES_PER_REQUEST {
            return Err(Error::InvalidParam(format!("at most {MAX_TO_DEVICE_MESSAGES_PER_REQUEST} messages per request")));
        }
        let mut queued = Vec::with_capacity(messages.len());
        let mut remote: std::collections::BTreeMap<
            chancery_proto::ruma::OwnedServerName,
            serde_json::Map<String, serde_json::Value>,
        > = std::collections::BTreeMap::new();
        for m in messages {
            let Ok(recipient) = UserId::parse(m.user_id.as_str()) else {
                return Err(Error::InvalidParam(format!("{:?} is not a user id", m.user_id)));
            };
            check_content(&m.content)?;
            if !self.is_local(&recipient) {
                let content: serde_json::Value = serde_json::from_str(&m.content).map_err(|e| Error::BadJson(e.to_string()))?;
                let devices = remote
                    .entry(recipient.server_name().to_owned())
                    .or_default()
                    .entry(m.user_id.clone())
                    .or_insert_with(|| serde_json::json!({}));
                devices[m.device_id.as_deref().unwrap_or("*")] = content;
                continue;
            }
            queued.push(ToDeviceMessage { user_id: m.user_id, device_id: m.device_id, content: m.content });
        }
        // Other servers' users get theirs as one EDU per server, committed
        // to the federation outbox before the local ones: a failure after
        // it makes the client retry, and the receiver drops the repeat
        // (same origin and message id).
        if !remote.is_empty() {
            let by_server = remote.into_iter().map(|(server, messages)| (server, serde_json::Value::Object(messages))).collect();
            let message_id = federation_message_id(&user.device_id, txn_id);
            self.deps.edus.to_device(&user.user_id, event_type, &message_id, by_server).await?;
        }
        let sender = user.user_id.as_str();
        match self.deps.keys.send_to_device(sender, &user.device_id, txn_id, event_type, &queued, MAX_TO_DEVICE_INBOX).await {
            Ok(outcome) => {
                if outcome.dropped_full > 0 {
                    tracing::warn!(dropped = outcome.dropped_full, "to-device messages dropped: their device's inbox is full");
                }
                let recipients: BTreeSet<&str> = queued.iter().map(|m| m.user_id.as_str()).collect();
                self.deps.device_lists.to_device_queued(recipients);
                Ok(())
            }
            // Spec "Transaction identifiers": a retry is answered as the
            // original request was.
            Err(StoreError::TransactionIdUsed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_per_device_and_transaction() {
        let id = federation_message_id("PHONE", "m1.1");
        assert_eq!(id, federation_message_id("PHONE", "m1.1"), "a retry keeps it");
        assert_eq!(id.len(), 22);
        let others = [
            federation_message_id("LAPTOP", "m1.1"),
            federation_message_id("PHONE", "m1.2"),
            federation_message_id("PHONEm", "1.1"),
        ];
        assert!(others.iter().all(|other| *other != id), "{others:?}");
    }

    #[test]
    fn content_must_be_an_object_bounded_and_without_nul() {
        assert!(check_content(r#"{"a": 1}"#).is_ok());
        assert!(check_content(r#" {"a": 1}"#).is_ok());
        assert!(matches!(check_content("[1]"), Err(Error::BadJson(_))));
        assert!(matches!(check_content("\"text\""), Err(Error::BadJson(_))));
        assert!(matches!(check_content(r#"{"a": "x\u0000"}"#), Err(Error::BadJson(_))));
        // An escaped backslash followed by `u0000` is no NUL.
        assert!(check_content(r#"{"a": "x\\u0000"}"#).is_ok());
        let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(MAX_TO_DEVICE_CONTENT_BYTES));
        assert!(matches!(check_content(&big), Err(Error::TooLarge(_))));
    }
}
