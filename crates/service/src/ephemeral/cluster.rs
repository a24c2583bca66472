//! What nodes sharing one PostgreSQL database tell each other of the state
//! they keep in memory: typing notifications and presence. Each change is
//! published through the store (`NOTIFY`, nothing stored) and applied by
//! every other node as if made there, waking its syncs the same way. A
//! node that misses a message (its LISTEN connection dropped) is wrong
//! until the next change or the typing timeout: the state is ephemeral.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chancery_proto::limits::{MAX_STATUS_MSG_BYTES, MAX_TYPING_TIMEOUT_MS};
use chancery_proto::ruma::presence::PresenceState;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::Ephemeral;
use super::presence::is_known;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Update {
    /// `timeout_ms` `None`: stopped typing.
    Typing {
        room_id: String,
        user_id: String,
        timeout_ms: Option<u64>,
    },
    Presence {
        user_id: String,
        presence: PresenceState,
        status_msg: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The publishing node, which skips its own messages.
    node: u64,
    #[serde(flatten)]
    update: Update,
}

impl Ephemeral {
    /// Tells the other nodes (if any) about a change made here.
    pub(super) fn publish(&self, update: Update) {
        if !self.shares_ephemeral {
            return;
        }
        let payload = match serde_json::to_string(&Envelope { node: self.node_id, update }) {
            Ok(payload) => payload,
            Err(e) => return tracing::warn!(error = %e, "could not encode an update for other nodes"),
        };
        let bus = Arc::clone(&self.deps.bus);
        tokio::spawn(async move {
            if let Err(e) = bus.publish_ephemeral(&payload).await {
                tracing::warn!(error = %e, "telling other nodes about typing or presence failed");
            }
        });
    }
}

/// Applies what other nodes publish, for as long as the component lives.
pub(super) fn follow_other_nodes(ephemeral: Weak<Ephemeral>, mut updates: broadcast::Receiver<String>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return tracing::warn!("no runtime: typing and presence from other nodes will not be seen");
    };
    runtime.spawn(async move {
        loop {
            match updates.recv().await {
                Ok(payload) => match ephemeral.upgrade() {
                    Some(ephemeral) => apply(&ephemeral, &payload),
                    None => return,
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "fell behind other nodes' typing and presence updates");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Applies one message from another node; malformed ones are dropped.
fn apply(ephemeral: &Ephemeral, payload: &str) {
    let envelope: Envelope = match serde_json::from_str(payload) {
        Ok(envelope) => envelope,
        Err(e) => return tracing::warn!(error = %e, "dropped a malformed update from another node"),
    };
    if envelope.node == ephemeral.node_id {
        return;
    }
    match envelope.update {
        Update::Typing { room_id, user_id, timeout_ms } => {
            let now = Instant::now();
            let until = timeout_ms.map(|ms| now + Duration::from_millis(ms.min(MAX_TYPING_TIMEOUT_MS)));
            if ephemeral.typing.set(&room_id, &user_id, until, now, ephemeral.deps.clock.now_ms()) {
                ephemeral.deps.notifier.room(&room_id);
            }
        }
        Update::Presence { user_id, presence, status_msg } => {
            let valid = is_known(&presence) && status_msg.as_ref().is_none_or(|m| m.len() <= MAX_STATUS_MSG_BYTES);
            if ephemeral.presence.enabled
                && valid
                && ephemeral.presence.set(&user_id, &presence, status_msg, ephemeral.deps.clock.now_ms()).is_some()
            {
                ephemeral.deps.notifier.everyone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_their_shape_on_the_wire() {
        let typing = Update::Typing { room_id: "!r:x".into(), user_id: "@a:x".into(), timeout_ms: Some(5_000) };
        let text = serde_json::to_string(&Envelope { node: 7, update: typing.clone() }).unwrap();
        assert_eq!(text, r#"{"node":7,"kind":"typing","room_id":"!r:x","user_id":"@a:x","timeout_ms":5000}"#);
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!((back.node, back.update), (7, typing));
        assert!(serde_json::from_str::<Envelope>(r#"{"node":1,"kind":"unknown"}"#).is_err());
    }
}
