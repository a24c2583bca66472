//! Server-side key backups (client-server API "Server-side key backups"):
//! versions with their `auth_data`, and the encrypted session keys of each
//! version, of which the server keeps the better one per session. The
//! server cannot read them: `session_data` is encrypted to the backup's
//! public key.

use std::collections::BTreeMap;

use chancery_proto::limits::{MAX_BACKED_UP_KEYS, MAX_BACKUP_AUTH_DATA_BYTES, MAX_BACKUP_SESSION_BYTES, MAX_BACKUP_VERSIONS};
use chancery_store::{BackedUpKey, BackupLimits, BackupScope, BackupVersion};
use serde_json::{Map, Value as JsonValue, json};

use super::Keys;
use crate::nul::refuse_nul_in_json;
use crate::{AuthedUser, Error};

const LIMITS: BackupLimits = BackupLimits { max_keys: MAX_BACKED_UP_KEYS, max_versions: MAX_BACKUP_VERSIONS };

/// One session's key as a client uploads it, before checking.
pub struct UploadedSession {
    pub room_id: String,
    pub session_id: String,
    pub data: JsonValue,
}

fn no_version() -> Error {
    Error::NotFound("no such backup version".into())
}

fn version_json(v: BackupVersion) -> Result<JsonValue, Error> {
    let auth_data: JsonValue =
        serde_json::from_str(&v.auth_data).map_err(|e| Error::Internal(format!("stored backup auth_data: {e}")))?;
    Ok(json!({ "version": v.version, "algorithm": v.algorithm, "auth_data": auth_data, "etag": v.etag, "count": v.count }))
}

fn check_auth_data(algorithm: &str, auth_data: &JsonValue) -> Result<String, Error> {
    if algorithm.is_empty() || algorithm.len() > 255 {
        return Err(Error::InvalidParam("a backup algorithm is 1 to 255 bytes".into()));
    }
    if !auth_data.is_object() {
        return Err(Error::BadJson("auth_data must be a JSON object".into()));
    }
    refuse_nul_in_json(auth_data, "auth_data")?;
    let text = auth_data.to_string();
    if text.len() > MAX_BACKUP_AUTH_DATA_BYTES {
        return Err(Error::TooLarge(format!("auth_data is at most {MAX_BACKUP_AUTH_DATA_BYTES} bytes")));
    }
    Ok(text)
}

/// A session's `KeyBackupData`, checked.
fn backed_up_key(s: UploadedSession) -> Result<BackedUpKey, Error> {
    let number = |field: &str| {
        s.data
            .get(field)
            .and_then(JsonValue::as_u64)
            .ok_or_else(|| Error::BadJson(format!("`{field}` must be a non-negative integer")))
    };
    let first_message_index = number("first_message_index")?;
    let forwarded_count = number("forwarded_count")?;
    let is_verified = s
        .data
        .get("is_verified")
        .and_then(JsonValue::as_bool)
        .ok_or_else(|| Error::BadJson("`is_verified` must be a boolean".into()))?;
    let session_data = s
        .data
        .get("session_data")
        .filter(|d| d.is_object())
        .ok_or_else(|| Error::BadJson("`session_data` must be an object".into()))?;
    refuse_nul_in_json(session_data, "session_data")?;
    let session_data = session_data.to_string();
    if session_data.len() > MAX_BACKUP_SESSION_BYTES {
        return Err(Error::TooLarge(format!("session_data is at most {MAX_BACKUP_SESSION_BYTES} bytes")));
    }
    if s.room_id.is_empty() || s.session_id.is_empty() || s.room_id.len() > 255 || s.session_id.len() > 255 {
        return Err(Error::InvalidParam("room and session ids are 1 to 255 bytes".into()));
    }
    Ok(BackedUpKey {
        room_id: s.room_id,
        session_id: s.session_id,
        first_message_index,
        forwarded_count,
        is_verified,
        session_data,
    })
}

fn key_json(k: &BackedUpKey) -> Result<JsonValue, Error> {
    let session_data: JsonValue =
        serde_json::from_str(&k.session_data).map_err(|e| Error::Internal(format!("stored session_data: {e}")))?;
    Ok(json!({
        "first_message_index": k.first_message_index,
        "forwarded_count": k.forwarded_count,
        "is_verified": k.is_verified,
        "session_data": session_data,
    }))
}

fn etag_and_count(v: &BackupVersion) -> JsonValue {
    json!({ "etag": v.etag, "count": v.count })
}

impl Keys {
    /// `POST /room_keys/version`.
    pub async fn create_backup(&self, user: &AuthedUser, algorithm: &str, auth_data: &JsonValue) -> Result<String, Error> {
        let auth_data = check_auth_data(algorithm, auth_data)?;
        Ok(self.deps.keys.create_backup_version(user.user_id.as_str(), algorithm, &auth_data, LIMITS).await?)
    }

    /// `GET /room_keys/version[/{version}]`: `M_NOT_FOUND` when there is no
    /// (such) backup, which clients read as "no backup yet".
    pub async fn backup(&self, user: &AuthedUser, version: Option<&str>) -> Result<JsonValue, Error> {
        let found = self.deps.keys.backup_version(user.user_id.as_str(), version).await?;
        version_json(found.ok_or_else(|| match version {
            None => Error::NotFound("no current backup version".into()),
            Some(_) => no_version(),
        })?)
    }

    /// `PUT /room_keys/version/{version}`: only `auth_data` changes.
    pub async fn update_backup(
        &self,
        user: &AuthedUser,
        version: &str,
        body_version: Option<&str>,
        algorithm: &str,
        auth_data: &JsonValue,
    ) -> Result<(), Error> {
        if body_version.is_some_and(|v| v != version) {
            return Err(Error::InvalidParam("the version in the body differs from the one in the path".into()));
        }
        let auth_data = check_auth_data(algorithm, auth_data)?;
        if self.deps.keys.update_backup_version(user.user_id.as_str(), version, algorithm, &auth_data).await? {
            Ok(())
        } else {
            Err(no_version())
        }
    }

    /// `DELETE /room_keys/version/{version}`.
    pub async fn delete_backup(&self, user: &AuthedUser, version: &str) -> Result<(), Error> {
        if self.deps.keys.delete_backup_version(user.user_id.as_str(), version).await? { Ok(()) } else { Err(no_version()) }
    }

    /// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`: into the current
    /// version only (`M_WRONG_ROOM_KEYS_VERSION` otherwise, naming it).
    pub async fn put_backup_keys(
        &self,
        user: &AuthedUser,
        version: &str,
        sessions: Vec<UploadedSession>,
    ) -> Result<JsonValue, Error> {
        let keys = sessions.into_iter().map(backed_up_key).collect::<Result<Vec<_>, _>>()?;
        let after = self.deps.keys.put_backed_up_keys(user.user_id.as_str(), version, &keys, LIMITS).await?;
        Ok(etag_and_count(&after))
    }

    /// `GET /room_keys/keys[/{roomId}[/{sessionId}]]`: the answer's shape
    /// follows the scope (all rooms, one room's sessions, one session).
    pub async fn backup_keys(&self, user: &AuthedUser, version: &str, scope: BackupScope<'_>) -> Result<JsonValue, Error> {
        let keys = self.deps.keys.backed_up_keys(user.user_id.as_str(), version, scope).await?.ok_or_else(no_version)?;
        match scope {
            BackupScope::Session { .. } => {
                let key = keys.first().ok_or_else(|| Error::NotFound("no key of this session is backed up".into()))?;
                key_json(key)
            }
            BackupScope::Room(_) => {
                let mut sessions = Map::new();
                for k in &keys {
                    sessions.insert(k.session_id.clone(), key_json(k)?);
                }
                Ok(json!({ "sessions": sessions }))
            }
            BackupScope::All => {
                let mut rooms: BTreeMap<&str, Map<String, JsonValue>> = BTreeMap::new();
                for k in &keys {
                    rooms.entry(k.room_id.as_str()).or_default().insert(k.session_id.clone(), key_json(k)?);
                }
                let rooms: Map<String, JsonValue> =
                    rooms.into_iter().map(|(room, sessions)| (room.to_owned(), json!({ "sessions": sessions }))).collect();
                Ok(json!({ "rooms": rooms }))
            }
        }
    }

    /// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]`.
    pub async fn delete_backup_keys(&self, user: &AuthedUser, version: &str, scope: BackupScope<'_>) -> Result<JsonValue, Error> {
        let after = self.deps.keys.delete_backed_up_keys(user.user_id.as_str(), version, scope).await?.ok_or_else(no_version)?;
        Ok(etag_and_count(&after))
    }
}
