use std::collections::BTreeMap;

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::rows::{self, ACCOUNT_COLUMNS, DEVICE_COLUMNS, SESSION_COLUMNS, TOKEN_COLUMNS, UIA_COLUMNS};
use chancery_store_sql::{i, u};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value as JsonValue;

use crate::keys::{device_ids_of, forget_account, forget_devices};
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(err, _) if err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY || err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

pub(crate) fn insert_device(conn: &Connection, d: &NewDevice) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO devices (user_id, device_id, display_name, created_ts, access_token_hash, access_expires_ts, refresh_token_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            d.user_id,
            d.device_id,
            d.display_name,
            i(d.now_ts),
            d.tokens.access_token_hash,
            d.tokens.access_expires_ts.map(i),
            d.tokens.refresh_token_hash
        ],
    )
    .map_err(backend)?;
    Ok(())
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    rows::session(&SqliteRow(row))
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    rows::device(&SqliteRow(row))
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<RegistrationToken> {
    rows::registration_token(&SqliteRow(row))
}

fn load_profile(conn: &Connection, user_id: &str) -> StoreResult<BTreeMap<String, JsonValue>> {
    let mut stmt = conn.prepare_cached("SELECT field, value FROM profile_fields WHERE user_id = ?1").map_err(backend)?;
    let rows = stmt.query_map([user_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(backend)?;
    let mut profile = BTreeMap::new();
    for row in rows {
        let (field, value) = row.map_err(backend)?;
        let value = serde_json::from_str(&value).map_err(|e| StoreError::Backend(format!("corrupt profile field: {e}")))?;
        profile.insert(field, value);
    }
    Ok(profile)
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        account: NewAccount,
        device: Option<NewDevice>,
        registration_token: Option<&str>,
        now_ts: u64,
    ) -> StoreResult<()> {
        let registration_token = registration_token.map(str::to_owned);
        self.write(move |tx| {
            if let Some(token) = &registration_token {
                let used = tx
                    .execute(
                        "UPDATE registration_tokens SET completed = completed + 1
                         WHERE token = ?1 AND revoked_ts IS NULL
                           AND (expiry_ts IS NULL OR expiry_ts > ?2)
                           AND (uses_allowed IS NULL OR completed < uses_allowed)",
                        params![token, i(now_ts)],
                    )
                    .map_err(backend)?;
                if used == 0 {
                    return Err(StoreError::RegistrationTokenUnusable);
                }
            }
            tx.execute(
                "INSERT INTO accounts (user_id, password_hash, is_admin, created_ts) VALUES (?1, ?2, ?3, ?4)",
                params![account.user_id, account.password_hash, account.is_admin, i(account.created_ts)],
            )
            .map_err(|e| if is_unique_violation(&e) { StoreError::UserIdTaken } else { backend(e) })?;
            if let Some(device) = &device {
                insert_device(tx, device)?;
            }
            Ok(())
        })
        .await
    }

    async fn account(&self, user_id: &str) -> StoreResult<Option<Account>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.query_row(&format!("SELECT {ACCOUNT_COLUMNS} WHERE user_id = ?1"), [user_id], |r| rows::account(&SqliteRow(r)))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn upsert_device(&self, device: NewDevice, max_devices: usize) -> StoreResult<()> {
        self.write(move |tx| {
            let active: Option<Option<i64>> = tx
                .query_row("SELECT deactivated_ts FROM accounts WHERE user_id = ?1", [&device.user_id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if !matches!(active, Some(None)) {
                return Err(StoreError::AccountInactive);
            }
            let updated = tx
                .execute(
                    "UPDATE devices SET display_name = COALESCE(?3, display_name), access_token_hash = ?4,
                        access_expires_ts = ?5, refresh_token_hash = ?6, prev_refresh_token_hash = NULL
                     WHERE user_id = ?1 AND device_id = ?2",
                    params![
                        device.user_id,
                        device.device_id,
                        device.display_name,
                        device.tokens.access_token_hash,
                        device.tokens.access_expires_ts.map(i),
                        device.tokens.refresh_token_hash
                    ],
                )
                .map_err(backend)?;
            if updated == 0 {
                let count: i64 = tx
                    .query_row("SELECT COUNT(*) FROM devices WHERE user_id = ?1", [&device.user_id], |r| r.get(0))
                    .map_err(backend)?;
                if u(count) as usize >= max_devices {
                    return Err(StoreError::TooManyDevices);
                }
                insert_device(tx, &device)?;
            }
            Ok(())
        })
        .await
    }

    async fn session_by_access_token(&self, access_token_hash: &str) -> StoreResult<Option<Session>> {
        let hash = access_token_hash.to_owned();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {SESSION_COLUMNS} WHERE d.access_token_hash = ?1")).map_err(backend)?;
            stmt.query_row([hash], session_from_row).optional().map_err(backend)
        })
        .await
    }

    async fn refresh_tokens(&self, refresh_token_hash: &str, new: &TokenPair) -> StoreResult<Option<Session>> {
        let old = refresh_token_hash.to_owned();
        let new = new.clone();
        self.write(move |tx| {
            // Presenting the current refresh token makes it the "previous"
            // one; presenting the previous one (a retry) keeps it so.
            let found: Option<(String, String, bool)> = tx
                .query_row(
                    "SELECT user_id, device_id, refresh_token_hash IS ?1 FROM devices
                     WHERE refresh_token_hash = ?1 OR prev_refresh_token_hash = ?1",
                    [&old],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((user_id, device_id, is_current)) = found else { return Ok(None) };
            tx.execute(
                "UPDATE devices SET access_token_hash = ?3, access_expires_ts = ?4, refresh_token_hash = ?5,
                    prev_refresh_token_hash = CASE WHEN ?6 THEN refresh_token_hash ELSE prev_refresh_token_hash END
                 WHERE user_id = ?1 AND device_id = ?2",
                params![
                    user_id,
                    device_id,
                    new.access_token_hash,
                    new.access_expires_ts.map(i),
                    new.refresh_token_hash,
                    is_current
                ],
            )
            .map_err(backend)?;
            tx.query_row(
                &format!("SELECT {SESSION_COLUMNS} WHERE d.user_id = ?1 AND d.device_id = ?2"),
                params![user_id, device_id],
                session_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn forget_previous_refresh_token(&self, user_id: &str, device_id: &str) -> StoreResult<()> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE devices SET prev_refresh_token_hash = NULL WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn devices(&self, user_id: &str) -> StoreResult<Vec<Device>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {DEVICE_COLUMNS} WHERE user_id = ?1 ORDER BY device_id"))
                .map_err(backend)?;
            let rows = stmt.query_map([user_id], device_from_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn device(&self, user_id: &str, device_id: &str) -> StoreResult<Option<Device>> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {DEVICE_COLUMNS} WHERE user_id = ?1 AND device_id = ?2"),
                params![user_id, device_id],
                device_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn set_device_display_name(&self, user_id: &str, device_id: &str, name: Option<&str>) -> StoreResult<bool> {
        let (user_id, device_id, name) = (user_id.to_owned(), device_id.to_owned(), name.map(str::to_owned));
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id, name],
                )
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_devices(&self, user_id: &str, device_ids: &[String]) -> StoreResult<()> {
        let (user_id, device_ids) = (user_id.to_owned(), device_ids.to_vec());
        self.write(move |tx| forget_devices(tx, &user_id, &device_ids)).await
    }

    async fn delete_all_devices(&self, user_id: &str, keep: Option<&str>) -> StoreResult<()> {
        let (user_id, keep) = (user_id.to_owned(), keep.map(str::to_owned));
        self.write(move |tx| {
            let device_ids = device_ids_of(tx, &user_id, keep.as_deref())?;
            forget_devices(tx, &user_id, &device_ids)
        })
        .await
    }

    async fn change_password(
        &self,
        user_id: &str,
        password_hash: &str,
        logout_others: bool,
        keep: Option<&str>,
    ) -> StoreResult<()> {
        let (user_id, hash, keep) = (user_id.to_owned(), password_hash.to_owned(), keep.map(str::to_owned));
        self.write(move |tx| {
            tx.execute("UPDATE accounts SET password_hash = ?2 WHERE user_id = ?1", params![user_id, hash]).map_err(backend)?;
            if logout_others {
                let device_ids = device_ids_of(tx, &user_id, keep.as_deref())?;
                forget_devices(tx, &user_id, &device_ids)?;
            }
            Ok(())
        })
        .await
    }

    async fn deactivate_account(&self, user_id: &str, now_ts: u64) -> StoreResult<()> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            forget_account(tx, &user_id)?;
            tx.execute("DELETE FROM profile_fields WHERE user_id = ?1", [&user_id]).map_err(backend)?;
            tx.execute("DELETE FROM uia_sessions WHERE user_id = ?1", [&user_id]).map_err(backend)?;
            // As Synapse: a deactivated account's thread subscriptions go
            // (the stream's counter does not go back).
            tx.execute("DELETE FROM thread_subscriptions WHERE user_id = ?1", [&user_id]).map_err(backend)?;
            tx.execute(
                "UPDATE accounts SET password_hash = NULL, deactivated_ts = COALESCE(deactivated_ts, ?2) WHERE user_id = ?1",
                params![user_id, i(now_ts)],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn profile(&self, user_id: &str) -> StoreResult<BTreeMap<String, JsonValue>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| load_profile(conn, &user_id)).await
    }

    async fn set_profile_field(&self, user_id: &str, key: &str, value: &JsonValue, max_profile_bytes: usize) -> StoreResult<()> {
        let (user_id, key, value) = (user_id.to_owned(), key.to_owned(), value.clone());
        self.write(move |tx| {
            let mut profile = load_profile(tx, &user_id)?;
            profile.insert(key.clone(), value.clone());
            if profile_size_bytes(&profile) > max_profile_bytes {
                return Err(StoreError::ProfileTooLarge);
            }
            tx.execute(
                "INSERT INTO profile_fields (user_id, field, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value",
                params![user_id, key, value.to_string()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_profile_field(&self, user_id: &str, key: &str) -> StoreResult<()> {
        let (user_id, key) = (user_id.to_owned(), key.to_owned());
        self.write(move |tx| {
            tx.execute("DELETE FROM profile_fields WHERE user_id = ?1 AND field = ?2", params![user_id, key]).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn create_registration_token(&self, token: &RegistrationToken) -> StoreResult<()> {
        let t = token.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_ts, created_ts, revoked_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.token, t.uses_allowed.map(i), i(t.completed), t.expiry_ts.map(i), i(t.created_ts), t.revoked_ts.map(i)],
            )
            .map_err(|e| if is_unique_violation(&e) { StoreError::RegistrationTokenExists } else { backend(e) })?;
            Ok(())
        })
        .await
    }

    async fn registration_tokens(&self) -> StoreResult<Vec<RegistrationToken>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} ORDER BY token")).map_err(backend)?;
            let rows = stmt.query_map([], token_from_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn registration_token(&self, token: &str) -> StoreResult<Option<RegistrationToken>> {
        let token = token.to_owned();
        self.read(move |conn| {
            conn.query_row(&format!("SELECT {TOKEN_COLUMNS} WHERE token = ?1"), [token], token_from_row)
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn revoke_registration_token(&self, token: &str, now_ts: u64) -> StoreResult<bool> {
        let token = token.to_owned();
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE registration_tokens SET revoked_ts = COALESCE(revoked_ts, ?2) WHERE token = ?1",
                    params![token, i(now_ts)],
                )
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn open_uia_session(
        &self,
        new: &UiaSession,
        expire_before_ts: u64,
        limits: UiaSessionLimits,
    ) -> StoreResult<UiaSession> {
        let new = new.clone();
        self.write(move |tx| {
            tx.execute("DELETE FROM uia_sessions WHERE created_ts < ?1", [i(expire_before_ts)]).map_err(backend)?;
            if let Some(user_id) = &new.user_id {
                let open = tx
                    .query_row(
                        &format!("SELECT {UIA_COLUMNS} WHERE user_id = ?1 AND operation = ?2 ORDER BY created_ts DESC LIMIT 1"),
                        [user_id, &new.operation],
                        |r| rows::uia_session(&SqliteRow(r)),
                    )
                    .optional()
                    .map_err(backend)?;
                if let Some((mut open, completed)) = open {
                    open.completed = serde_json::from_str(&completed).map_err(|e| StoreError::Backend(e.to_string()))?;
                    return Ok(open);
                }
                let theirs: i64 = tx
                    .query_row("SELECT COUNT(*) FROM uia_sessions WHERE user_id = ?1", [user_id], |r| r.get(0))
                    .map_err(backend)?;
                if u(theirs) >= limits.max_per_user {
                    return Err(StoreError::TooManyUiaSessions);
                }
            }
            let live: i64 = tx.query_row("SELECT COUNT(*) FROM uia_sessions", [], |r| r.get(0)).map_err(backend)?;
            if u(live) >= limits.max_sessions {
                return Err(StoreError::TooManyUiaSessions);
            }
            let completed = serde_json::to_string(&new.completed).map_err(|e| StoreError::Backend(e.to_string()))?;
            tx.execute(
                "INSERT INTO uia_sessions (session_id, operation, user_id, completed, registration_token, created_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![new.session_id, new.operation, new.user_id, completed, new.registration_token, i(new.created_ts)],
            )
            .map_err(|e| if is_unique_violation(&e) { StoreError::UiaSessionExists } else { backend(e) })?;
            Ok(new)
        })
        .await
    }

    async fn uia_session(&self, session_id: &str) -> StoreResult<Option<UiaSession>> {
        let id = session_id.to_owned();
        self.read(move |conn| {
            let found = conn
                .query_row(&format!("SELECT {UIA_COLUMNS} WHERE session_id = ?1"), [id], |r| rows::uia_session(&SqliteRow(r)))
                .optional()
                .map_err(backend)?;
            found
                .map(|(mut s, completed)| {
                    s.completed = serde_json::from_str(&completed).map_err(|e| StoreError::Backend(e.to_string()))?;
                    Ok(s)
                })
                .transpose()
        })
        .await
    }

    async fn update_uia_session(&self, session: &UiaSession) -> StoreResult<()> {
        let s = session.clone();
        self.write(move |tx| {
            let completed = serde_json::to_string(&s.completed).map_err(|e| StoreError::Backend(e.to_string()))?;
            tx.execute(
                "UPDATE uia_sessions SET user_id = ?2, completed = ?3, registration_token = ?4 WHERE session_id = ?1",
                params![s.session_id, s.user_id, completed, s.registration_token],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()> {
        let id = session_id.to_owned();
        self.write(move |tx| {
            tx.execute("DELETE FROM uia_sessions WHERE session_id = ?1", [id]).map_err(backend)?;
            Ok(())
        })
        .await
    }
}
