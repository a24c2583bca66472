//! The profiles component (client-server API "Profiles", v1.16+
//! arbitrary fields): each local user's profile, read by anyone, changed
//! by its owner.

use std::collections::BTreeMap;
use std::sync::Arc;

use chancery_proto::limits::{MAX_AVATAR_URL_BYTES, MAX_DISPLAYNAME_BYTES, MAX_PROFILE_BYTES, MAX_PROFILE_KEY_BYTES};
use chancery_proto::ruma::{MxcUri, OwnedServerName, UserId};
use chancery_store::AccountStore;
use serde_json::Value as JsonValue;

use crate::nul::refuse_nul_in_json;
use crate::{AuthedUser, Error, Federation};

/// Users' profiles.
pub struct Profiles {
    store: Arc<dyn AccountStore>,
    server_name: OwnedServerName,
    /// Asks other servers for their users' profiles.
    federation: Arc<Federation>,
}

impl Profiles {
    pub fn new(store: Arc<dyn AccountStore>, server_name: OwnedServerName, federation: Arc<Federation>) -> Self {
        Self { store, server_name, federation }
    }

    async fn local_active_user(&self, user_id: &UserId) -> Result<(), Error> {
        if user_id.server_name() != self.server_name {
            return Err(Error::NotFound("profiles of users on other servers are not available".into()));
        }
        match self.store.account(user_id.as_str()).await? {
            Some(a) if !a.deactivated => Ok(()),
            _ => Err(Error::NotFound("no such user".into())),
        }
    }

    /// A user's profile: a local user's from the store, another server's
    /// user's from that server (`/_matrix/federation/v1/query/profile`).
    pub async fn profile(&self, user_id: &UserId) -> Result<BTreeMap<String, JsonValue>, Error> {
        if user_id.server_name() != self.server_name {
            return self.federation.query_profile(user_id, None).await;
        }
        self.local_active_user(user_id).await?;
        Ok(self.store.profile(user_id.as_str()).await?)
    }

    pub async fn profile_field(&self, user_id: &UserId, key: &str) -> Result<JsonValue, Error> {
        let mut profile = if user_id.server_name() != self.server_name {
            self.federation.query_profile(user_id, Some(key)).await?
        } else {
            self.profile(user_id).await?
        };
        profile.remove(key).ok_or_else(|| Error::NotFound(format!("the profile has no {key}")))
    }

    /// A local user's profile as another server asks for it (all of it,
    /// or one field); users of other servers are not answered for.
    pub async fn profile_for_federation(
        &self,
        user_id: &UserId,
        field: Option<&str>,
    ) -> Result<BTreeMap<String, JsonValue>, Error> {
        if user_id.server_name() != self.server_name {
            return Err(Error::InvalidParam("that user is not on this server".into()));
        }
        let mut profile = self.profile(user_id).await?;
        if let Some(field) = field {
            profile.retain(|k, _| k == field);
        }
        Ok(profile)
    }

    /// Sets (or, for an empty `avatar_url`/`displayname`, removes) a field of
    /// the caller's own profile.
    pub async fn set_profile_field(&self, user: &AuthedUser, target: &UserId, key: &str, value: JsonValue) -> Result<(), Error> {
        if user.user_id != target {
            return Err(Error::Forbidden("you can only change your own profile".into()));
        }
        if key.len() > MAX_PROFILE_KEY_BYTES {
            return Err(Error::KeyTooLarge);
        }
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(Error::InvalidParam("profile keys must be non-empty without control characters".into()));
        }
        match key {
            "displayname" => match &value {
                JsonValue::String(s) if s.len() > MAX_DISPLAYNAME_BYTES => {
                    return Err(Error::InvalidParam(format!("display names are at most {MAX_DISPLAYNAME_BYTES} bytes")));
                }
                JsonValue::String(s) if s.is_empty() => return self.delete_profile_field(user, target, key).await,
                JsonValue::String(_) => {}
                JsonValue::Null => return self.delete_profile_field(user, target, key).await,
                _ => return Err(Error::BadJson("displayname must be a string".into())),
            },
            "avatar_url" => match &value {
                JsonValue::String(s) if s.is_empty() => return self.delete_profile_field(user, target, key).await,
                JsonValue::String(s) if s.len() > MAX_AVATAR_URL_BYTES => {
                    return Err(Error::InvalidParam(format!("avatar URLs are at most {MAX_AVATAR_URL_BYTES} bytes")));
                }
                JsonValue::String(s) if <&MxcUri>::from(s.as_str()).validate().is_ok() => {}
                JsonValue::Null => return self.delete_profile_field(user, target, key).await,
                _ => return Err(Error::InvalidParam("avatar_url must be an mxc:// URI".into())),
            },
            "m.tz" if !value.is_string() => return Err(Error::BadJson("m.tz must be a string".into())),
            _ => {}
        }
        // Display names are copied into member events and searched as JSON.
        refuse_nul_in_json(&value, "profile fields")?;
        self.local_active_user(target).await?;
        self.store.set_profile_field(target.as_str(), key, &value, MAX_PROFILE_BYTES).await?;
        Ok(())
    }

    pub async fn delete_profile_field(&self, user: &AuthedUser, target: &UserId, key: &str) -> Result<(), Error> {
        if user.user_id != target {
            return Err(Error::Forbidden("you can only change your own profile".into()));
        }
        if key.len() > MAX_PROFILE_KEY_BYTES {
            return Err(Error::KeyTooLarge);
        }
        self.store.delete_profile_field(target.as_str(), key).await?;
        Ok(())
    }
}
