//! Sync tokens: one position per stream a client syncs on (see
//! ARCHITECTURE.md, "Stream positions").
//!
//! Format: `s{events}_{account_data}_{receipts}_{typing}_{presence}_{to_device}_{device_lists}_{thread_subscriptions}`. The first part
//! is the events position, so a sync token is also a valid `/messages`
//! `from` token (pagination reads only the first part, see
//! [`crate::rooms::parse_token`]). Tokens of the older one-part form `s{events}`
//! still parse, with the missing parts 0: a client upgraded across this
//! change gets the account data, receipts and typing it has not seen yet.

use std::fmt;

use crate::Error;

/// A position in every stream: what a client has seen up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamToken {
    /// Timeline events (and state, memberships, invites).
    pub events: u64,
    /// Account data, global and per room (incl. tags, fully-read markers).
    pub account_data: u64,
    /// Read receipts.
    pub receipts: u64,
    /// This node's typing serial (in memory; see `typing.rs`).
    pub typing: u64,
    /// This node's presence serial (in memory; see `presence.rs`).
    pub presence: u64,
    /// The device's to-device messages delivered (and acknowledged by the
    /// next sync that carries this token).
    pub to_device: u64,
    /// Users' device and key changes.
    pub device_lists: u64,
    /// Users' thread subscriptions (MSC4306; read by sliding sync's
    /// MSC4308 extension). Tokens made before it existed read as 0.
    pub thread_subscriptions: u64,
}

/// Streams after `events`, in token order.
const PARTS: usize = 8;

impl StreamToken {
    /// Parses a token; anything else is `M_INVALID_PARAM`.
    pub fn parse(token: &str) -> Result<Self, Error> {
        let malformed = || Error::InvalidParam("malformed sync token".into());
        let rest = token.strip_prefix('s').ok_or_else(malformed)?;
        let mut parts = [0u64; PARTS];
        for (index, part) in rest.split('_').enumerate() {
            if index == PARTS || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            parts[index] = part.parse().map_err(|_| malformed())?;
        }
        let [events, account_data, receipts, typing, presence, to_device, device_lists, thread_subscriptions] = parts;
        Ok(Self { events, account_data, receipts, typing, presence, to_device, device_lists, thread_subscriptions })
    }
}

impl fmt::Display for StreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "s{}_{}_{}_{}_{}_{}_{}_{}",
            self.events,
            self.account_data,
            self.receipts,
            self.typing,
            self.presence,
            self.to_device,
            self.device_lists,
            self.thread_subscriptions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_old_form() {
        let t = StreamToken {
            events: 12,
            account_data: 3,
            receipts: 0,
            typing: 1_700_000_000_000,
            presence: 7,
            to_device: 9,
            device_lists: 4,
            thread_subscriptions: 5,
        };
        assert_eq!(t.to_string(), "s12_3_0_1700000000000_7_9_4_5");
        assert_eq!(StreamToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(StreamToken::parse("s42").unwrap(), StreamToken { events: 42, ..Default::default() });
        assert_eq!(StreamToken::parse("s1_2").unwrap(), StreamToken { events: 1, account_data: 2, ..Default::default() });
        // Tokens handed out before the encryption streams existed.
        assert_eq!(StreamToken::parse("s1_2_3_4_5").unwrap().to_device, 0);
        // ... and before the thread-subscriptions stream.
        assert_eq!(StreamToken::parse("s1_2_3_4_5_6_7").unwrap().thread_subscriptions, 0);
        // Pagination reads the events part of a sync token.
        assert_eq!(crate::rooms::parse_token(&t.to_string()).unwrap(), 12);
    }

    #[test]
    fn malformed() {
        for bad in
            ["", "s", "12", "s1_", "s_1", "s1_2_3_4_5_6_7_8_9", "s-1", "s1_x", "t1", "s1__2", "s+1", "s99999999999999999999999"]
        {
            assert!(StreamToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
