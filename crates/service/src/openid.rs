//! The OpenID component (client-server API "OpenID", server-server API
//! "OpenID"): tokens a user asks for and hands to a third party, which
//! exchanges them for the user's id. The MatrixRTC token service
//! ([`crate::calls`]) is such a third party, served by this process.
//!
//! Tokens are 256 random bits from the injected entropy, valid an hour
//! ([`OPENID_TOKEN_LIFETIME_MS`]), stored only as SHA-256 digests like
//! access tokens, so any node validates them and a database leak yields
//! no usable token. A user holds at most [`MAX_OPENID_TOKENS_PER_USER`];
//! expired ones are deleted by the maintenance pass.

use std::sync::Arc;

use chancery_proto::limits::{MAX_OPENID_TOKENS_PER_USER, OPENID_TOKEN_LIFETIME_MS};
use chancery_proto::ruma::{OwnedServerName, OwnedUserId, UserId};
use chancery_store::{NewOpenIdToken, OpenIdStore};

use crate::clock::Clock;
use crate::tokens::{self, Entropy};
use crate::{AuthedUser, Error};

/// What [`OpenId`] is built from.
pub struct OpenIdDeps {
    pub store: Arc<dyn OpenIdStore>,
    pub server_name: OwnedServerName,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
}

/// A token as handed to its user (`POST /user/{userId}/openid/request_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedOpenIdToken {
    pub access_token: String,
    pub matrix_server_name: OwnedServerName,
    pub expires_in_secs: u64,
}

/// OpenID tokens: issuing and validating them.
pub struct OpenId {
    deps: OpenIdDeps,
}

impl OpenId {
    pub fn new(deps: OpenIdDeps) -> Self {
        Self { deps }
    }

    /// The server whose users' tokens this component validates.
    pub fn server_name(&self) -> &OwnedServerName {
        &self.deps.server_name
    }

    /// A new token for `user`, who may only ask for themselves (403
    /// `M_FORBIDDEN` otherwise, as Synapse answers).
    pub async fn request_token(&self, user: &AuthedUser, for_user: &UserId) -> Result<IssuedOpenIdToken, Error> {
        if user.user_id != for_user {
            return Err(Error::Forbidden("you may only request OpenID tokens for yourself".into()));
        }
        let access_token = tokens::generate(self.deps.entropy.as_ref(), "cho_");
        let now = self.deps.clock.now_ms();
        let token = NewOpenIdToken {
            token_hash: tokens::hash(&access_token),
            user_id: user.user_id.to_string(),
            expires_ts: now.saturating_add(OPENID_TOKEN_LIFETIME_MS),
            created_ts: now,
        };
        self.deps.store.save_openid_token(&token, now, MAX_OPENID_TOKENS_PER_USER).await?;
        Ok(IssuedOpenIdToken {
            access_token,
            matrix_server_name: self.deps.server_name.clone(),
            expires_in_secs: OPENID_TOKEN_LIFETIME_MS / 1000,
        })
    }

    /// The user a token was issued to: `UnknownToken` (401
    /// `M_UNKNOWN_TOKEN`) when it is unknown, expired, or its user was
    /// deactivated.
    pub async fn userinfo(&self, access_token: &str) -> Result<OwnedUserId, Error> {
        let now = self.deps.clock.now_ms();
        let user = self.deps.store.openid_token_user(&tokens::hash(access_token), now).await?;
        let user = user.ok_or(Error::UnknownToken { soft_logout: false })?;
        UserId::parse(&user).map_err(|e| Error::Internal(format!("stored OpenID token of an invalid user id: {e}")))
    }

    /// Deletes the expired tokens (the maintenance pass); returns how many.
    pub async fn delete_expired(&self) -> Result<u64, Error> {
        Ok(self.deps.store.delete_expired_openid_tokens(self.deps.clock.now_ms()).await?)
    }
}
