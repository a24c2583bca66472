//! Registration, login, tokens, devices, password changes and deactivation.

use chancery_core::uia::{Operation, stage};
use chancery_core::username::{self, UsernameError};
use chancery_proto::limits::{MAX_DEVICE_DISPLAY_NAME_BYTES, MAX_DEVICE_ID_BYTES, MAX_DEVICES_PER_DELETE, MAX_PASSWORD_BYTES};
use chancery_proto::ruma::{OwnedUserId, UserId};
use chancery_store::{Device, NewAccount, NewDevice, TokenPair};

use crate::uia::AuthPayload;
use crate::{Error, RegistrationMode, Services, now_ms, password, tokens};

/// A request authenticated by its access token.
#[derive(Debug, Clone)]
pub struct AuthedUser {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub is_admin: bool,
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

impl Services {
    fn issue_tokens(&self, with_refresh: bool, now: u64) -> IssuedTokens {
        let access_token = tokens::generate("cha_");
        let refresh_token = with_refresh.then(|| tokens::generate("chr_"));
        let lifetime = self.config().access_token_lifetime_ms;
        let expires_in_ms = with_refresh.then_some(lifetime);
        let stored = TokenPair {
            access_token_hash: tokens::hash(&access_token),
            access_expires_ts: expires_in_ms.map(|ms| now.saturating_add(ms)),
            refresh_token_hash: refresh_token.as_deref().map(tokens::hash),
        };
        IssuedTokens { access_token, refresh_token, expires_in_ms, stored }
    }

    fn check_password_policy(&self, password: &str) -> Result<(), Error> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::InvalidParam(format!("passwords are at most {MAX_PASSWORD_BYTES} bytes")));
        }
        let min = self.config().password_min_length;
        if password.chars().count() < min {
            return Err(Error::WeakPassword(format!("passwords must have at least {min} characters")));
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

    /// Validates a localpart for a new account and returns the user id.
    fn new_user_id(&self, localpart: &str) -> Result<OwnedUserId, Error> {
        username::validate_new_localpart(localpart, self.server_name()).map_err(|e| Error::InvalidUsername(e.to_string()))?;
        if self.config().reserved_usernames.iter().any(|r| r == localpart) {
            return Err(Error::Exclusive);
        }
        UserId::parse(format!("@{localpart}:{}", self.server_name())).map_err(|e| Error::InvalidUsername(e.to_string()))
    }

    /// `GET /register/available`.
    pub async fn username_available(&self, localpart: &str, client_address: Option<&str>) -> Result<(), Error> {
        if let Some(address) = client_address {
            self.inner.limiters.register_per_address.check(address)?;
        }
        if self.config().registration == RegistrationMode::Disabled {
            return Err(Error::RegistrationDisabled);
        }
        let user_id = self.new_user_id(localpart)?;
        match self.store().account(user_id.as_str()).await? {
            Some(_) => Err(Error::UserInUse),
            None => Ok(()),
        }
    }

    /// `GET /register/m.login.registration_token/validity`.
    pub async fn registration_token_valid(&self, token: &str, client_address: Option<&str>) -> Result<bool, Error> {
        if let Some(address) = client_address {
            self.inner.limiters.register_per_address.check(address)?;
        }
        if self.config().registration != RegistrationMode::Token {
            return Err(Error::RegistrationDisabled);
        }
        if !crate::uia::is_valid_registration_token(token) {
            return Ok(false);
        }
        Ok(self.store().registration_token(token).await?.is_some_and(|t| t.is_usable(now_ms())))
    }

    /// `POST /register`: checks what can be checked before interactive
    /// auth (so a taken name is reported at once), runs interactive auth,
    /// then creates the account, its first device and consumes the
    /// registration token in one transaction.
    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterOutcome, Error> {
        if let Some(address) = &req.client_address {
            self.inner.limiters.register_per_address.check(address)?;
        }
        if req.guest {
            return Err(Error::GuestAccessForbidden);
        }
        let flows = match self.config().registration {
            RegistrationMode::Disabled => return Err(Error::RegistrationDisabled),
            RegistrationMode::Open => vec![vec![stage::DUMMY]],
            RegistrationMode::Token => vec![vec![stage::REGISTRATION_TOKEN]],
        };
        let user_id = match &req.username {
            Some(name) => self.new_user_id(name)?,
            None => self.new_user_id(&tokens::random_string(tokens::LOWER_ALNUM, 12))?,
        };
        if self.store().account(user_id.as_str()).await?.is_some() {
            return Err(Error::UserInUse);
        }
        if let Some(password) = &req.password {
            self.check_password_policy(password)?;
        }
        Self::check_device_fields(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;

        let session = self.authorize(Operation::Register, None, flows, req.auth).await?;

        let now = now_ms();
        let password_hash = match req.password {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        let account = NewAccount { user_id: user_id.to_string(), password_hash, is_admin: false, created_ts: now };
        let (device, outcome) = if req.inhibit_login {
            (None, None)
        } else {
            let device_id = req.device_id.unwrap_or_else(|| tokens::random_string(tokens::UPPER, 10));
            let issued = self.issue_tokens(req.refresh_token, now);
            let device = NewDevice {
                user_id: user_id.to_string(),
                device_id: device_id.clone(),
                display_name: req.initial_device_display_name,
                tokens: issued.stored,
                now_ts: now,
            };
            let outcome = LoginOutcome {
                user_id: user_id.clone(),
                device_id,
                access_token: issued.access_token,
                refresh_token: issued.refresh_token,
                expires_in_ms: issued.expires_in_ms,
            };
            (Some(device), Some(outcome))
        };
        self.store().create_account(account, device, session.registration_token.as_deref(), now).await?;
        self.finish_uia(&session).await;
        tracing::info!(user_id = %user_id, "registered a new account");
        Ok(RegisterOutcome { user_id, session: outcome })
    }

    /// `chancery create-user`: an operator creates an account directly.
    pub async fn create_user(&self, localpart: &str, password: Option<String>, is_admin: bool) -> Result<OwnedUserId, Error> {
        let user_id = self.new_user_id(localpart).or_else(|e| match e {
            // Operators may take reserved names.
            Error::Exclusive => {
                UserId::parse(format!("@{localpart}:{}", self.server_name())).map_err(|e| Error::InvalidUsername(e.to_string()))
            }
            e => Err(e),
        })?;
        if let Some(p) = &password {
            self.check_password_policy(p)?;
        }
        let password_hash = match password {
            Some(p) => Some(password::hash(p).await?),
            None => None,
        };
        let account = NewAccount { user_id: user_id.to_string(), password_hash, is_admin, created_ts: now_ms() };
        self.store().create_account(account, None, None, now_ms()).await?;
        Ok(user_id)
    }

    /// `POST /login` with `m.login.password`.
    pub async fn login(&self, req: LoginRequest) -> Result<LoginOutcome, Error> {
        if let Some(address) = &req.client_address {
            self.inner.limiters.login_per_address.check(address)?;
        }
        if req.password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::Forbidden("invalid user or password".into()));
        }
        let user_id = match username::resolve_login_user(&req.user, self.server_name()) {
            Ok(u) => u,
            Err(UsernameError::ForeignServer) => return Err(Error::Forbidden("this user does not belong to this server".into())),
            Err(_) => return Err(Error::Forbidden("invalid user or password".into())),
        };
        self.inner.limiters.login_per_account.check(user_id.as_str())?;
        Self::check_device_fields(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let account = self.store().account(user_id.as_str()).await?;
        let stored_hash = account.as_ref().and_then(|a| a.password_hash.clone());
        let verified = password::verify(req.password, stored_hash).await?;
        if account.as_ref().is_some_and(|a| a.deactivated) {
            return Err(Error::UserDeactivated);
        }
        if !verified {
            return Err(Error::Forbidden("invalid user or password".into()));
        }
        let now = now_ms();
        let device_id = req.device_id.unwrap_or_else(|| tokens::random_string(tokens::UPPER, 10));
        let issued = self.issue_tokens(req.refresh_token, now);
        let device = NewDevice {
            user_id: user_id.to_string(),
            device_id: device_id.clone(),
            display_name: req.initial_device_display_name,
            tokens: issued.stored,
            now_ts: now,
        };
        self.store().upsert_device(device, self.config().max_devices_per_user).await?;
        Ok(LoginOutcome {
            user_id,
            device_id,
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_in_ms: issued.expires_in_ms,
        })
    }

    /// Resolves an access token. An expired token is a soft logout (the
    /// client should refresh or log in again keeping its data); an unknown
    /// one is a hard logout.
    pub async fn authenticate(&self, access_token: &str) -> Result<AuthedUser, Error> {
        let session = self
            .store()
            .session_by_access_token(&tokens::hash(access_token))
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        if session.access_expires_ts.is_some_and(|expires| now_ms() >= expires) {
            return Err(Error::UnknownToken { soft_logout: true });
        }
        if session.previous_refresh_pending {
            self.store().forget_previous_refresh_token(&session.user_id, &session.device_id).await?;
        }
        let user_id =
            UserId::parse(session.user_id.as_str()).map_err(|e| Error::Internal(format!("stored user id is invalid: {e}")))?;
        Ok(AuthedUser { user_id, device_id: session.device_id, is_admin: session.is_admin })
    }

    /// `POST /refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> Result<LoginOutcome, Error> {
        let now = now_ms();
        let issued = self.issue_tokens(true, now);
        let session = self
            .store()
            .refresh_tokens(&tokens::hash(refresh_token), &issued.stored)
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        let user_id = UserId::parse(session.user_id.as_str()).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(LoginOutcome {
            user_id,
            device_id: session.device_id,
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_in_ms: issued.expires_in_ms,
        })
    }

    /// `POST /logout`: the device and its tokens go.
    pub async fn logout(&self, user: &AuthedUser) -> Result<(), Error> {
        self.store().delete_devices(user.user_id.as_str(), std::slice::from_ref(&user.device_id)).await?;
        Ok(())
    }

    /// `POST /logout/all`.
    pub async fn logout_all(&self, user: &AuthedUser) -> Result<(), Error> {
        self.store().delete_all_devices(user.user_id.as_str(), None).await?;
        Ok(())
    }

    pub async fn devices(&self, user: &AuthedUser) -> Result<Vec<Device>, Error> {
        Ok(self.store().devices(user.user_id.as_str()).await?)
    }

    pub async fn device(&self, user: &AuthedUser, device_id: &str) -> Result<Device, Error> {
        self.store().device(user.user_id.as_str(), device_id).await?.ok_or_else(|| Error::NotFound("no such device".into()))
    }

    /// `PUT /devices/{deviceId}`.
    pub async fn rename_device(&self, user: &AuthedUser, device_id: &str, name: Option<&str>) -> Result<(), Error> {
        Self::check_device_fields(None, name)?;
        if self.store().set_device_display_name(user.user_id.as_str(), device_id, name).await? {
            Ok(())
        } else {
            Err(Error::NotFound("no such device".into()))
        }
    }

    /// `POST /delete_devices` and `DELETE /devices/{deviceId}` (interactive
    /// auth with the account password).
    pub async fn delete_devices(&self, user: &AuthedUser, device_ids: &[String], auth: Option<AuthPayload>) -> Result<(), Error> {
        if device_ids.len() > MAX_DEVICES_PER_DELETE {
            return Err(Error::InvalidParam(format!("at most {MAX_DEVICES_PER_DELETE} devices per request")));
        }
        let flows = vec![vec![stage::PASSWORD]];
        let session = self.authorize(Operation::DeleteDevices, Some(user.user_id.as_str()), flows, auth).await?;
        self.store().delete_devices(user.user_id.as_str(), device_ids).await?;
        self.finish_uia(&session).await;
        Ok(())
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
        let session = self.authorize(Operation::ChangePassword, Some(user.user_id.as_str()), flows, auth).await?;
        let hash = password::hash(new_password).await?;
        self.store().change_password(user.user_id.as_str(), &hash, logout_devices, Some(&user.device_id)).await?;
        self.finish_uia(&session).await;
        tracing::info!(user_id = %user.user_id, logout_devices, "password changed");
        Ok(())
    }

    /// `POST /account/deactivate`.
    pub async fn deactivate(&self, user: &AuthedUser, auth: Option<AuthPayload>) -> Result<(), Error> {
        let flows = vec![vec![stage::PASSWORD]];
        let session = self.authorize(Operation::Deactivate, Some(user.user_id.as_str()), flows, auth).await?;
        self.store().deactivate_account(user.user_id.as_str(), now_ms()).await?;
        self.finish_uia(&session).await;
        tracing::info!(user_id = %user.user_id, "account deactivated");
        Ok(())
    }
}
