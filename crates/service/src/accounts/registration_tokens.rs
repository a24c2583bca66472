//! Operator management of registration tokens (MSC3231, spec
//! `m.login.registration_token`).

use chancery_store::RegistrationToken;

use super::Accounts;
use super::uia::is_valid_registration_token;
use crate::{Error, tokens};

#[derive(Debug, Clone, Default)]
pub struct NewRegistrationToken {
    /// A chosen token, or `None` for a random one of `length` characters.
    pub token: Option<String>,
    pub length: usize,
    pub uses_allowed: Option<u64>,
    pub expiry_ts: Option<u64>,
}

impl Accounts {
    pub async fn create_registration_token(&self, new: NewRegistrationToken) -> Result<RegistrationToken, Error> {
        let token = match new.token {
            Some(t) => t,
            None => tokens::random_string(&*self.deps.entropy, tokens::ALNUM, new.length.clamp(1, 64)),
        };
        if !is_valid_registration_token(&token) {
            return Err(Error::InvalidParam("tokens are 1 to 64 characters from A-Z, a-z, 0-9, '.', '_', '~' and '-'".into()));
        }
        let now = self.deps.clock.now_ms();
        if new.expiry_ts.is_some_and(|e| e <= now) {
            return Err(Error::InvalidParam("the expiry time is in the past".into()));
        }
        let record = RegistrationToken {
            token,
            uses_allowed: new.uses_allowed,
            completed: 0,
            expiry_ts: new.expiry_ts,
            created_ts: now,
            revoked_ts: None,
        };
        self.deps.store.create_registration_token(&record).await?;
        Ok(record)
    }

    pub async fn registration_tokens(&self) -> Result<Vec<RegistrationToken>, Error> {
        Ok(self.deps.store.registration_tokens().await?)
    }

    pub async fn revoke_registration_token(&self, token: &str) -> Result<(), Error> {
        if self.deps.store.revoke_registration_token(token, self.deps.clock.now_ms()).await? {
            Ok(())
        } else {
            Err(Error::NotFound("no such registration token".into()))
        }
    }
}
