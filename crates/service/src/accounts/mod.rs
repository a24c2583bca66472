//! The accounts component: registration, login, access and refresh
//! tokens, devices, password changes, deactivation and registration
//! tokens. Interactive auth ([`InteractiveAuth`]) is its part, shared with
//! the components that need it; passwords are hashed in [`password`].
//!
//! In memory: the Argon2 buffer pool and queue, per node and disposable.

mod devices;
mod password;
mod registration_tokens;
mod uia;

use std::sync::Arc;

use chancery_core::uia::{Operation, stage};
use chancery_core::username::{self, UsernameError};
use chancery_proto::limits::{MAX_DEVICE_DISPLAY_NAME_BYTES, MAX_DEVICE_ID_BYTES, MAX_PASSWORD_BYTES};
use chancery_proto::ruma::{OwnedServerName, OwnedUserId, UserId};
use chancery_store::{AccountStore, NewAccount, NewDevice, TokenPair};

pub use registration_tokens::NewRegistrationToken;
pub use uia::{AuthPayload, AuthStage, InteractiveAuth, InteractiveAuthDeps};

use crate::Error;
use crate::clock::Clock;
use crate::ratelimit::Limiters;
use crate::tokens::{self, Entropy};

/// Who may create an account through the client-server API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Only operators create accounts (`chancery create-user`).
    #[default]
    Disabled,
    /// Anyone holding a registration token.
    Token,
    /// Anyone.
    Open,
}

/// What the accounts component needs from the configuration.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    pub server_name: OwnedServerName,
    pub registration: RegistrationMode,
    /// Localparts nobody may register (answered with `M_EXCLUSIVE`).
    pub reserved_usernames: Vec<String>,
    pub password_min_length: usize,
    /// Lifetime of access tokens that come with a refresh token.
    pub access_token_lifetime_ms: u64,
    pub max_devices_per_user: usize,
}

/// A request authenticated by its access token.
#[derive(Debug, Clone)]
pub struct AuthedUser {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub is_admin: bool,
}

impl AuthedUser {
    /// Errors unless the user is a server admin (Synapse's answer).
    pub fn ensure_admin(&self) -> Result<(), Error> {
        if self.is_admin { Ok(()) } else { Err(Error::Forbidden("You are not a server admin".into())) }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RegisterRequest {
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    pub inhibit_login: bool,
    pub refresh_token: bool,
    pub guest: bool,
    pub auth: Option<AuthPayload>,
    /// Used only as a rate-limit key, never stored.
    pub client_address: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    pub user_id: OwnedUserId,
    /// `None` with `inhibit_login`.
    pub session: Option<LoginOutcome>,
}

#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// What the client gave as identifier: a localpart or a user id.
    pub user: String,
    pub password: String,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    pub refresh_token: bool,
    pub client_address: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

/// Tokens to hand out once, and their stored form.
struct IssuedTokens {
    access_token: String,
    refresh_token: Option<String>,
    expires_in_ms: Option<u64>,
    stored: TokenPair,
}

impl IssuedTokens {
    fn outcome(self, user_id: OwnedUserId, device_id: String) -> LoginOutcome {
        LoginOutcome {
            user_id,
            device_id,
            access_token: self.access_token,
            refresh_token: self.refresh_token,
            expires_in_ms: self.expires_in_ms,
        }
    }
}

/// What [`Accounts`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct AccountsDeps {
    pub config: AccountsConfig,
    pub store: Arc<dyn AccountStore>,
    /// Guards registration, device deletion, password changes and
    /// deactivation.
    pub uia: Arc<InteractiveAuth>,
    pub limiters: Arc<Limiters>,
    /// Token expiry and creation times.
    pub clock: Arc<dyn Clock>,
    /// Tokens, device ids and generated user names.
    pub entropy: Arc<dyn Entropy>,
    /// Deleted devices (whose keys the store deletes with them) change
    /// the user's device list: waiting syncs are told.
    pub device_lists: Arc<crate::keys::DeviceLists>,
}

/// Accounts, sessions and devices.
pub struct Accounts {
    deps: AccountsDeps,
}

impl Accounts {
    pub fn new(deps: AccountsDeps) -> Self {
        Self { deps }
    }

    fn issue_tokens(&self, with_refresh: bool, now: u64) -> IssuedTokens {
        let access_token = tokens::generate(&*self.deps.entropy, "cha_");
        let refresh_token = with_refresh.then(|| tokens::generate(&*self.deps.entropy, "chr_"));
        let expires_in_ms = with_refresh.then_some(self.deps.config.access_token_lifetime_ms);
        let stored = TokenPair {
            access_token_hash: tokens::hash(&access_token),
            access_expires_ts: expires_in_ms.map(|ms| now.saturating_add(ms)),
            refresh_token_hash: refresh_token.as_deref().map(tokens::hash),
        };
        IssuedTokens { access_token, refresh_token, expires_in_ms, stored }
    }

    /// A new device of `user_id` with fresh tokens, and what its client
    /// is told once.
    fn new_session(
        &self,
        user_id: &UserId,
        device_id: Option<String>,
        display_name: Option<String>,
        with_refresh: bool,
        now: u64,
    ) -> (NewDevice, LoginOutcome) {
        let device_id = device_id.unwrap_or_else(|| tokens::random_string(&*self.deps.entropy, tokens::UPPER, 10));
        let issued = self.issue_tokens(with_refresh, now);
        let device = NewDevice {
            user_id: user_id.to_string(),
            device_id: device_id.clone(),
            display_name,
            tokens: issued.stored.clone(),
            now_ts: now,
        };
        (device, issued.outcome(user_id.to_owned(), device_id))
    }

    fn check_password_policy(&self, password: &str) -> Result<(), Error> {
        check_password_policy(password, self.deps.config.password_min_length)
    }

    /// Validates a localpart for a new account and returns the user id.
    fn new_user_id(&self, localpart: &str) -> Result<OwnedUserId, Error> {
        let server_name = &self.deps.config.server_name;
        username::validate_new_localpart(localpart, server_name).map_err(|e| Error::InvalidUsername(e.to_string()))?;
        if self.deps.config.reserved_usernames.iter().any(|r| r == localpart) {
            return Err(Error::Exclusive);
        }
        UserId::parse(format!("@{localpart}:{server_name}")).map_err(|e| Error::InvalidUsername(e.to_string()))
    }

    /// `GET /register/available`.
    pub async fn username_available(&self, localpart: &str, client_address: Option<&str>) -> Result<(), Error> {
        if let Some(address) = client_address {
            self.deps.limiters.register_per_address.check_address(address)?;
        }
        if self.deps.config.registration == RegistrationMode::Disabled {
            return Err(Error::RegistrationDisabled);
        }
        let user_id = self.new_user_id(localpart)?;
        match self.deps.store.account(user_id.as_str()).await? {
            Some(_) => Err(Error::UserInUse),
            None => Ok(()),
        }
    }

    /// `GET /register/m.login.registration_token/validity`.
    pub async fn registration_token_valid(&self, token: &str, client_address: Option<&str>) -> Result<bool, Error> {
        if let Some(address) = client_address {
            self.deps.limiters.register_per_address.check_address(address)?;
        }
        if self.deps.config.registration != RegistrationMode::Token {
            return Err(Error::RegistrationDisabled);
        }
        if !uia::is_valid_registration_token(token) {
            return Ok(false);
        }
        Ok(self.deps.store.registration_token(token).await?.is_some_and(|t| t.is_usable(self.deps.clock.now_ms())))
    }

    /// `POST /register`: checks what can be checked before interactive
    /// auth (so a taken name is reported at once), runs interactive auth,
    /// then creates the account, its first device and consumes the
    /// registration token in one transaction.
    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterOutcome, Error> {
        if let Some(address) = &req.client_address {
            self.deps.limiters.register_per_address.check_address(address)?;
        }
        if req.guest {
            return Err(Error::GuestAccessForbidden);
        }
        let flows = registration_flows(self.deps.config.registration)?;
        let user_id = match &req.username {
            Some(name) => self.new_user_id(name)?,
            None => self.new_user_id(&tokens::random_string(&*self.deps.entropy, tokens::LOWER_ALNUM, 12))?,
        };
        if self.deps.store.account(user_id.as_str()).await?.is_some() {
            return Err(Error::UserInUse);
        }
        if let Some(password) = &req.password {
            self.check_password_policy(password)?;
        }
        check_device_fields(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;

        let session = self.deps.uia.authorize(Operation::Register, None, flows, req.auth).await?;

        let now = self.deps.clock.now_ms();
        let password_hash = match req.password {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        let account = NewAccount { user_id: user_id.to_string(), password_hash, is_admin: false, created_ts: now };
        let (device, outcome) = if req.inhibit_login {
            (None, None)
        } else {
            let (device, outcome) =
                self.new_session(&user_id, req.device_id, req.initial_device_display_name, req.refresh_token, now);
            (Some(device), Some(outcome))
        };
        self.deps.store.create_account(account, device, session.registration_token.as_deref(), now).await?;
        self.deps.uia.finish(&session).await;
        tracing::info!(user_id = %user_id, "registered a new account");
        Ok(RegisterOutcome { user_id, session: outcome })
    }

    /// `chancery create-user`: an operator creates an account directly.
    pub async fn create_user(&self, localpart: &str, password: Option<String>, is_admin: bool) -> Result<OwnedUserId, Error> {
        let user_id = self.new_user_id(localpart).or_else(|e| match e {
            // Operators may take reserved names.
            Error::Exclusive => UserId::parse(format!("@{localpart}:{}", self.deps.config.server_name))
                .map_err(|e| Error::InvalidUsername(e.to_string())),
            e => Err(e),
        })?;
        if let Some(p) = &password {
            self.check_password_policy(p)?;
        }
        let password_hash = match password {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        let now = self.deps.clock.now_ms();
        let account = NewAccount { user_id: user_id.to_string(), password_hash, is_admin, created_ts: now };
        self.deps.store.create_account(account, None, None, now).await?;
        Ok(user_id)
    }

    /// `POST /login` with `m.login.password`.
    pub async fn login(&self, req: LoginRequest) -> Result<LoginOutcome, Error> {
        if let Some(address) = &req.client_address {
            self.deps.limiters.login_per_address.check_address(address)?;
        }
        if req.password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::Forbidden("invalid user or password".into()));
        }
        let user_id = match username::resolve_login_user(&req.user, &self.deps.config.server_name) {
            Ok(u) => u,
            Err(UsernameError::ForeignServer) => return Err(Error::Forbidden("this user does not belong to this server".into())),
            Err(_) => return Err(Error::Forbidden("invalid user or password".into())),
        };
        self.deps.limiters.login_per_account.check(user_id.as_str())?;
        check_device_fields(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let account = self.deps.store.account(user_id.as_str()).await?;
        let stored_hash = account.as_ref().and_then(|a| a.password_hash.clone());
        let verified = password::verify(req.password, stored_hash).await?;
        // The password first: a deactivated account answers like a wrong
        // password to anyone who does not know it, so nobody learns which
        // accounts were deactivated. (Deactivation clears the password, as
        // in Synapse, so in practice it is always the wrong-password answer.)
        if !verified {
            return Err(Error::Forbidden("invalid user or password".into()));
        }
        if account.as_ref().is_some_and(|a| a.deactivated) {
            return Err(Error::UserDeactivated);
        }
        let now = self.deps.clock.now_ms();
        let (device, outcome) =
            self.new_session(&user_id, req.device_id, req.initial_device_display_name, req.refresh_token, now);
        self.deps.store.upsert_device(device, self.deps.config.max_devices_per_user).await?;
        Ok(outcome)
    }

    /// Resolves an access token. An expired token is a soft logout (the
    /// client should refresh or log in again keeping its data); an unknown
    /// one is a hard logout.
    pub async fn authenticate(&self, access_token: &str) -> Result<AuthedUser, Error> {
        let session = self
            .deps
            .store
            .session_by_access_token(&tokens::hash(access_token))
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        if session.access_expires_ts.is_some_and(|expires| self.deps.clock.now_ms() >= expires) {
            return Err(Error::UnknownToken { soft_logout: true });
        }
        if session.previous_refresh_pending {
            self.deps.store.forget_previous_refresh_token(&session.user_id, &session.device_id).await?;
        }
        let user_id =
            UserId::parse(session.user_id.as_str()).map_err(|e| Error::Internal(format!("stored user id is invalid: {e}")))?;
        Ok(AuthedUser { user_id, device_id: session.device_id, is_admin: session.is_admin })
    }

    /// `POST /refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> Result<LoginOutcome, Error> {
        let issued = self.issue_tokens(true, self.deps.clock.now_ms());
        let session = self
            .deps
            .store
            .refresh_tokens(&tokens::hash(refresh_token), &issued.stored)
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        let user_id = UserId::parse(session.user_id.as_str()).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(issued.outcome(user_id, session.device_id))
    }

    /// `POST /account/password`.
    pub async fn change_password(
        &self,
        user: &AuthedUser,
        new_password: String,
        logout_devices: bool,
        auth: Option<AuthPayload>,
    ) -> Result<(), Error> {
        self.check_password_policy(&new_password)?;
        let flows = vec![vec![stage::PASSWORD]];
        let session = self.deps.uia.authorize(Operation::ChangePassword, Some(user.user_id.as_str()), flows, auth).await?;
        let hash = password::hash(new_password).await?;
        self.deps.store.change_password(user.user_id.as_str(), &hash, logout_devices, Some(&user.device_id)).await?;
        self.deps.uia.finish(&session).await;
        if logout_devices {
            self.deps.device_lists.changed(user.user_id.as_str()).await;
        }
        tracing::info!(user_id = %user.user_id, logout_devices, "password changed");
        Ok(())
    }

    /// `POST /account/deactivate`.
    pub async fn deactivate(&self, user: &AuthedUser, auth: Option<AuthPayload>) -> Result<(), Error> {
        let flows = vec![vec![stage::PASSWORD]];
        let session = self.deps.uia.authorize(Operation::Deactivate, Some(user.user_id.as_str()), flows, auth).await?;
        self.deps.store.deactivate_account(user.user_id.as_str(), self.deps.clock.now_ms()).await?;
        self.deps.uia.finish(&session).await;
        self.deps.device_lists.changed(user.user_id.as_str()).await;
        tracing::info!(user_id = %user.user_id, "account deactivated");
        Ok(())
    }
}

/// The interactive-auth flows of `/register` under a registration mode.
fn registration_flows(mode: RegistrationMode) -> Result<Vec<Vec<&'static str>>, Error> {
    match mode {
        RegistrationMode::Disabled => Err(Error::RegistrationDisabled),
        RegistrationMode::Open => Ok(vec![vec![stage::DUMMY]]),
        RegistrationMode::Token => Ok(vec![vec![stage::REGISTRATION_TOKEN]]),
    }
}

fn check_password_policy(password: &str, min_length: usize) -> Result<(), Error> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::InvalidParam(format!("passwords are at most {MAX_PASSWORD_BYTES} bytes")));
    }
    if password.chars().count() < min_length {
        return Err(Error::WeakPassword(format!("passwords must have at least {min_length} characters")));
    }
    Ok(())
}

fn check_device_fields(device_id: Option<&str>, display_name: Option<&str>) -> Result<(), Error> {
    if let Some(id) = device_id
        && (id.is_empty() || id.len() > MAX_DEVICE_ID_BYTES || id.chars().any(char::is_control))
    {
        return Err(Error::InvalidParam(format!(
            "device_id must be 1 to {MAX_DEVICE_ID_BYTES} bytes without control characters"
        )));
    }
    if display_name.is_some_and(|n| n.contains('\0')) {
        return Err(Error::InvalidParam("device names must not contain NUL".into()));
    }
    if display_name.is_some_and(|n| n.len() > MAX_DEVICE_DISPLAY_NAME_BYTES) {
        return Err(Error::InvalidParam(format!("device names are at most {MAX_DEVICE_DISPLAY_NAME_BYTES} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy_and_device_fields() {
        assert!(check_password_policy("12345678", 8).is_ok());
        assert!(matches!(check_password_policy("1234567", 8), Err(Error::WeakPassword(_))));
        assert!(matches!(check_password_policy(&"x".repeat(MAX_PASSWORD_BYTES + 1), 8), Err(Error::InvalidParam(_))));
        assert!(check_device_fields(Some("ABC"), Some("phone")).is_ok());
        for (id, name) in [(Some(""), None), (Some("A\u{7}"), None), (None, Some("a\0b"))] {
            assert!(matches!(check_device_fields(id, name), Err(Error::InvalidParam(_))), "{id:?} {name:?}");
        }
        assert!(matches!(registration_flows(RegistrationMode::Disabled), Err(Error::RegistrationDisabled)));
        assert_eq!(registration_flows(RegistrationMode::Token).unwrap(), [[stage::REGISTRATION_TOKEN]]);
    }
}
