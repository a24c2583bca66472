//! OpenID tokens (client-server API "OpenID"): short-lived tokens a user
//! hands to a third party (the MatrixRTC token service), which the third
//! party exchanges for the user's id (`/_matrix/federation/v1/openid/userinfo`).
//!
//! Kept in the store, so any node sharing the database validates a token
//! another node issued. Stored as SHA-256 digests only, like access
//! tokens. Tokens expire (the caller passes the time), and a user holds
//! a bounded number of unexpired ones.

use async_trait::async_trait;

use crate::StoreResult;

/// An OpenID token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOpenIdToken {
    /// SHA-256 of the token handed to the client (hex).
    pub token_hash: String,
    pub user_id: String,
    /// When it stops being valid, in ms since the epoch.
    pub expires_ts: u64,
    pub created_ts: u64,
}

#[async_trait]
pub trait OpenIdStore: Send + Sync {
    /// Saves a token. In the same transaction, deletes the user's tokens
    /// that expired by `now_ts` and, when the user already holds
    /// `max_per_user` tokens, their oldest, so they keep at most that many
    /// (the oldest is the one a client is least likely still to use).
    /// A hash is saved once (the caller draws the token at random).
    async fn save_openid_token(&self, token: &NewOpenIdToken, now_ts: u64, max_per_user: usize) -> StoreResult<()>;

    /// The user a token was issued to, if it has not expired by `now_ts`
    /// and the user's account is active.
    async fn openid_token_user(&self, token_hash: &str, now_ts: u64) -> StoreResult<Option<String>>;

    /// Deletes every token expired by `now_ts` (the maintenance pass);
    /// returns how many.
    async fn delete_expired_openid_tokens(&self, now_ts: u64) -> StoreResult<u64>;
}
