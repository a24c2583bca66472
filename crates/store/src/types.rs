use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// Full user id, `@localpart:server`.
    pub user_id: String,
    /// Argon2id PHC string; `None` for accounts that cannot log in with a
    /// password.
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub created_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub deactivated: bool,
    pub created_ts: u64,
}

/// Fresh tokens for a device, as SHA-256 hex digests: the tokens themselves
/// are never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub access_token_hash: String,
    /// When the access token stops working; `None` = until logout.
    pub access_expires_ts: Option<u64>,
    pub refresh_token_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub user_id: String,
    pub device_id: String,
    /// `None` keeps the existing name when the device already exists.
    pub display_name: Option<String>,
    pub tokens: TokenPair,
    pub now_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub created_ts: u64,
}

/// Who an access token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub device_id: String,
    pub is_admin: bool,
    pub access_expires_ts: Option<u64>,
    /// The previous refresh token still works; it stops once this access
    /// token is used.
    pub previous_refresh_pending: bool,
}

/// A registration token (spec `m.login.registration_token`, MSC3231).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationToken {
    pub token: String,
    /// `None` = unlimited.
    pub uses_allowed: Option<u64>,
    /// Registrations completed with it.
    pub completed: u64,
    /// `None` = never expires.
    pub expiry_ts: Option<u64>,
    pub created_ts: u64,
    pub revoked_ts: Option<u64>,
}

impl RegistrationToken {
    /// Whether one more registration may use it at `now_ts`.
    pub fn is_usable(&self, now_ts: u64) -> bool {
        self.revoked_ts.is_none()
            && self.expiry_ts.is_none_or(|expiry| now_ts < expiry)
            && self.uses_allowed.is_none_or(|allowed| self.completed < allowed)
    }
}

/// Bounds of the interactive-auth sessions (see `proto::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UiaSessionLimits {
    /// Live sessions of everyone together.
    pub max_sessions: u64,
    /// Live sessions of one logged-in user.
    pub max_per_user: u64,
}

/// A user-interactive-auth session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiaSession {
    pub session_id: String,
    /// Which operation it authorises (`core::uia::Operation::as_str`).
    pub operation: String,
    /// For operations of a logged-in user: who started it.
    pub user_id: Option<String>,
    /// Stage types completed, in order.
    pub completed: Vec<String>,
    /// The registration token validated in this session, consumed when the
    /// account is created.
    pub registration_token: Option<String>,
    pub created_ts: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub connections: u64,
    pub idle: u64,
}
