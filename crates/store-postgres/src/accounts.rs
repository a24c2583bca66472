//! `AccountStore` on PostgreSQL.
//!
//! Writes that are a single statement run in autocommit: the statement is
//! its own transaction, and BEGIN/COMMIT would only add round trips. Writes
//! of several statements run in one transaction at READ COMMITTED, made
//! safe against concurrent nodes like this:
//! - every operation that changes a user's devices (or checks a per-user
//!   limit) first locks that user's `accounts` row, so they run one at a
//!   time per user and always take locks in the order account, then rows;
//! - registration-token uses are counted by a conditional UPDATE, whose row
//!   lock makes a concurrent use re-check the limit against the new count;
//! - the global interactive-auth session cap is checked under an advisory
//!   lock, as there is no row to lock for "the number of sessions";
//! - a deletion of devices deletes their keys, inboxes and transaction ids
//!   too and moves the user in the device-list stream (`keys.rs`); those
//!   key rows may be held by a one-time key claim waiting for one the
//!   deletion holds, so the deleting methods run again on a deadlock.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::rows::{self, ACCOUNT_COLUMNS, DEVICE_COLUMNS, SESSION_COLUMNS, TOKEN_COLUMNS, UIA_COLUMNS};
use chancery_store_sql::{i, u};
use deadpool_postgres::GenericClient;
use serde_json::Value as JsonValue;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::query::{PgRow, execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// Advisory-lock key serialising interactive-auth session creation
/// ("chancuia" in ASCII).
const UIA_LOCK: i64 = 0x6368_616e_6375_6961;

/// `taken` for a unique violation, so that a duplicate id is an operating
/// error rather than a 500, as in the SQLite backend.
fn unique_or_backend(taken: StoreError) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) { taken } else { backend(e) }
    }
}

/// Serialises device changes and per-user limit checks for one user across
/// all nodes, until the transaction ends. NO KEY UPDATE is enough, since the
/// key never changes, and does not block foreign-key checks.
pub(crate) async fn lock_account(c: &impl GenericClient, user_id: &str) -> StoreResult<Option<Row>> {
    query_opt(c, "SELECT deactivated_ts FROM accounts WHERE user_id = $1 FOR NO KEY UPDATE", &[&user_id]).await
}

pub(crate) async fn insert_device(c: &impl GenericClient, d: &NewDevice) -> StoreResult<()> {
    execute(
        c,
        "INSERT INTO devices (user_id, device_id, display_name, created_ts, access_token_hash, access_expires_ts, refresh_token_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &d.user_id,
            &d.device_id,
            &d.display_name,
            &i(d.now_ts),
            &d.tokens.access_token_hash,
            &d.tokens.access_expires_ts.map(i),
            &d.tokens.refresh_token_hash,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Every device but `$2` (all when NULL) of user `$1`.
const DELETE_OTHER_DEVICES: &str = "DELETE FROM devices WHERE user_id = $1 AND device_id IS DISTINCT FROM $2 RETURNING device_id";

/// Runs a `DELETE FROM devices ... RETURNING device_id`: the devices whose
/// keys go with them (`keys::forget_devices`).
async fn delete_devices_returning(
    c: &impl GenericClient,
    sql: &str,
    params: crate::query::Params<'_>,
) -> StoreResult<Vec<String>> {
    query(c, sql, params).await?.iter().map(|r| get(r, 0)).collect()
}

fn session_from_row(row: &Row) -> StoreResult<Session> {
    rows::session(&PgRow(row))
}

fn device_from_row(row: &Row) -> StoreResult<Device> {
    rows::device(&PgRow(row))
}

fn token_from_row(row: &Row) -> StoreResult<RegistrationToken> {
    rows::registration_token(&PgRow(row))
}

fn uia_from_row(row: &Row) -> StoreResult<UiaSession> {
    let (mut session, completed) = rows::uia_session(&PgRow(row))?;
    session.completed = serde_json::from_str(&completed).map_err(|e| StoreError::Backend(format!("corrupt UIA session: {e}")))?;
    Ok(session)
}

async fn load_profile(c: &impl GenericClient, user_id: &str) -> StoreResult<BTreeMap<String, JsonValue>> {
    let rows = query(c, "SELECT field, value FROM profile_fields WHERE user_id = $1", &[&user_id]).await?;
    let mut profile = BTreeMap::new();
    for row in &rows {
        let value: &str = get(row, 1)?;
        let value = serde_json::from_str(value).map_err(|e| StoreError::Backend(format!("corrupt profile field: {e}")))?;
        profile.insert(get(row, 0)?, value);
    }
    Ok(profile)
}

#[async_trait]
impl AccountStore for PostgresStore {
    async fn create_account(
        &self,
        account: NewAccount,
        device: Option<NewDevice>,
        registration_token: Option<&str>,
        now_ts: u64,
    ) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        if let Some(token) = registration_token {
            // A concurrent use of the same token waits on this row lock and
            // then re-evaluates the WHERE against our committed count.
            let used = execute(
                &tx,
                "UPDATE registration_tokens SET completed = completed + 1
                 WHERE token = $1 AND revoked_ts IS NULL
                   AND (expiry_ts IS NULL OR expiry_ts > $2)
                   AND (uses_allowed IS NULL OR completed < uses_allowed)",
                &[&token, &i(now_ts)],
            )
            .await
            .map_err(backend)?;
            if used == 0 {
                return Err(StoreError::RegistrationTokenUnusable);
            }
        }
        execute(
            &tx,
            "INSERT INTO accounts (user_id, password_hash, is_admin, created_ts) VALUES ($1, $2, $3, $4)",
            &[&account.user_id, &account.password_hash, &account.is_admin, &i(account.created_ts)],
        )
        .await
        .map_err(unique_or_backend(StoreError::UserIdTaken))?;
        if let Some(device) = &device {
            insert_device(&tx, device).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn account(&self, user_id: &str) -> StoreResult<Option<Account>> {
        let client = self.client().await?;
        let sql = format!("SELECT {ACCOUNT_COLUMNS} WHERE user_id = $1");
        query_opt(&client, &sql, &[&user_id]).await?.map(|r| rows::account(&PgRow(&r))).transpose()
    }

    async fn upsert_device(&self, device: NewDevice, max_devices: usize) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // The lock makes concurrent logins of one user count devices one
        // after the other, so together they cannot pass `max_devices`.
        let Some(account) = lock_account(&tx, &device.user_id).await? else {
            return Err(StoreError::AccountInactive);
        };
        if get::<Option<i64>>(&account, 0)?.is_some() {
            return Err(StoreError::AccountInactive);
        }
        let updated = execute(
            &tx,
            "UPDATE devices SET display_name = COALESCE($3, display_name), access_token_hash = $4,
                access_expires_ts = $5, refresh_token_hash = $6, prev_refresh_token_hash = NULL
             WHERE user_id = $1 AND device_id = $2",
            &[
                &device.user_id,
                &device.device_id,
                &device.display_name,
                &device.tokens.access_token_hash,
                &device.tokens.access_expires_ts.map(i),
                &device.tokens.refresh_token_hash,
            ],
        )
        .await
        .map_err(backend)?;
        if updated == 0 {
            let count = query_opt(&tx, "SELECT COUNT(*) FROM devices WHERE user_id = $1", &[&device.user_id]).await?;
            let count: i64 = count.map(|r| get(&r, 0)).transpose()?.unwrap_or(0);
            if u(count) as usize >= max_devices {
                return Err(StoreError::TooManyDevices);
            }
            insert_device(&tx, &device).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn session_by_access_token(&self, access_token_hash: &str) -> StoreResult<Option<Session>> {
        let client = self.client().await?;
        let sql = format!("SELECT {SESSION_COLUMNS} WHERE d.access_token_hash = $1");
        query_opt(&client, &sql, &[&access_token_hash]).await?.map(|r| session_from_row(&r)).transpose()
    }

    async fn refresh_tokens(&self, refresh_token_hash: &str, new: &TokenPair) -> StoreResult<Option<Session>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Presenting the current refresh token makes it the "previous" one;
        // presenting the previous one (a retry) keeps it so. FOR UPDATE makes
        // a concurrent refresh of the same device see our result and count
        // as a retry, instead of both overwriting each other's tokens.
        let found = query_opt(
            &tx,
            "SELECT user_id, device_id, refresh_token_hash IS NOT DISTINCT FROM $1 FROM devices
             WHERE refresh_token_hash = $1 OR prev_refresh_token_hash = $1
             FOR UPDATE",
            &[&refresh_token_hash],
        )
        .await?;
        let Some(found) = found else { return Ok(None) };
        let (user_id, device_id, is_current): (String, String, bool) = (get(&found, 0)?, get(&found, 1)?, get(&found, 2)?);
        execute(
            &tx,
            "UPDATE devices SET access_token_hash = $3, access_expires_ts = $4, refresh_token_hash = $5,
                prev_refresh_token_hash = CASE WHEN $6 THEN refresh_token_hash ELSE prev_refresh_token_hash END
             WHERE user_id = $1 AND device_id = $2",
            &[&user_id, &device_id, &new.access_token_hash, &new.access_expires_ts.map(i), &new.refresh_token_hash, &is_current],
        )
        .await
        .map_err(backend)?;
        let sql = format!("SELECT {SESSION_COLUMNS} WHERE d.user_id = $1 AND d.device_id = $2");
        let session = query_opt(&tx, &sql, &[&user_id, &device_id]).await?.map(|r| session_from_row(&r)).transpose()?;
        tx.commit().await.map_err(backend)?;
        Ok(session)
    }

    async fn forget_previous_refresh_token(&self, user_id: &str, device_id: &str) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE devices SET prev_refresh_token_hash = NULL WHERE user_id = $1 AND device_id = $2",
            &[&user_id, &device_id],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn devices(&self, user_id: &str) -> StoreResult<Vec<Device>> {
        let client = self.client().await?;
        let sql = format!("SELECT {DEVICE_COLUMNS} WHERE user_id = $1 ORDER BY device_id");
        query(&client, &sql, &[&user_id]).await?.iter().map(device_from_row).collect()
    }

    async fn device(&self, user_id: &str, device_id: &str) -> StoreResult<Option<Device>> {
        let client = self.client().await?;
        let sql = format!("SELECT {DEVICE_COLUMNS} WHERE user_id = $1 AND device_id = $2");
        query_opt(&client, &sql, &[&user_id, &device_id]).await?.map(|r| device_from_row(&r)).transpose()
    }

    async fn set_device_display_name(&self, user_id: &str, device_id: &str, name: Option<&str>) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
            &[&user_id, &device_id, &name],
        )
        .await
        .map_err(backend)?;
        Ok(n > 0)
    }

    async fn delete_devices(&self, user_id: &str, device_ids: &[String]) -> StoreResult<()> {
        // Deleting the devices' keys takes key rows a claim may hold (see
        // `keys.rs`): a deadlock is run again.
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            lock_account(&tx, user_id).await?;
            let deleted = delete_devices_returning(
                &tx,
                "DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2) RETURNING device_id",
                &[&user_id, &device_ids],
            )
            .await?;
            crate::keys::forget_devices(&tx, user_id, &deleted).await?;
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn delete_all_devices(&self, user_id: &str, keep: Option<&str>) -> StoreResult<()> {
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            lock_account(&tx, user_id).await?;
            let deleted = delete_devices_returning(&tx, DELETE_OTHER_DEVICES, &[&user_id, &keep]).await?;
            crate::keys::forget_devices(&tx, user_id, &deleted).await?;
            tx.commit().await.map_err(backend)
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
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            // The UPDATE locks the account row first, so a login racing with
            // this cannot slip a device in after the DELETE has run.
            execute(&tx, "UPDATE accounts SET password_hash = $2 WHERE user_id = $1", &[&user_id, &password_hash])
                .await
                .map_err(backend)?;
            if logout_others {
                let deleted = delete_devices_returning(&tx, DELETE_OTHER_DEVICES, &[&user_id, &keep]).await?;
                crate::keys::forget_devices(&tx, user_id, &deleted).await?;
            }
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn deactivate_account(&self, user_id: &str, now_ts: u64) -> StoreResult<()> {
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            // Account first (unlike SQLite, order matters here): once its row is
            // locked and marked, no login or profile write can add rows behind
            // the DELETEs below.
            execute(
                &tx,
                "UPDATE accounts SET password_hash = NULL, deactivated_ts = COALESCE(deactivated_ts, $2) WHERE user_id = $1",
                &[&user_id, &i(now_ts)],
            )
            .await
            .map_err(backend)?;
            let deleted =
                delete_devices_returning(&tx, "DELETE FROM devices WHERE user_id = $1 RETURNING device_id", &[&user_id]).await?;
            execute(&tx, "DELETE FROM profile_fields WHERE user_id = $1", &[&user_id]).await.map_err(backend)?;
            // Same lock as open_uia_session, which deletes expired sessions:
            // two DELETEs over overlapping rows could otherwise deadlock.
            execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&UIA_LOCK]).await.map_err(backend)?;
            execute(&tx, "DELETE FROM uia_sessions WHERE user_id = $1", &[&user_id]).await.map_err(backend)?;
            // As Synapse: a deactivated account's thread subscriptions go
            // (the stream's counter does not go back).
            execute(&tx, "DELETE FROM thread_subscriptions WHERE user_id = $1", &[&user_id]).await.map_err(backend)?;
            // Last: it ends in the device-list stream's lock, which is held
            // until commit.
            crate::keys::forget_account(&tx, user_id, &deleted).await?;
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn profile(&self, user_id: &str) -> StoreResult<BTreeMap<String, JsonValue>> {
        let client = self.client().await?;
        load_profile(&client, user_id).await
    }

    async fn set_profile_field(&self, user_id: &str, key: &str, value: &JsonValue, max_profile_bytes: usize) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Without the lock, two nodes setting different fields could each
        // pass the size check and together exceed it.
        lock_account(&tx, user_id).await?;
        let mut profile = load_profile(&tx, user_id).await?;
        profile.insert(key.to_owned(), value.clone());
        if profile_size_bytes(&profile) > max_profile_bytes {
            return Err(StoreError::ProfileTooLarge);
        }
        execute(
            &tx,
            "INSERT INTO profile_fields (user_id, field, value) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value",
            &[&user_id, &key, &value.to_string()],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn delete_profile_field(&self, user_id: &str, key: &str) -> StoreResult<()> {
        let client = self.client().await?;
        execute(&client, "DELETE FROM profile_fields WHERE user_id = $1 AND field = $2", &[&user_id, &key])
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn create_registration_token(&self, token: &RegistrationToken) -> StoreResult<()> {
        let client = self.client().await?;
        let t = token;
        execute(
            &client,
            "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_ts, created_ts, revoked_ts)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&t.token, &t.uses_allowed.map(i), &i(t.completed), &t.expiry_ts.map(i), &i(t.created_ts), &t.revoked_ts.map(i)],
        )
        .await
        .map_err(unique_or_backend(StoreError::RegistrationTokenExists))?;
        Ok(())
    }

    async fn registration_tokens(&self) -> StoreResult<Vec<RegistrationToken>> {
        let client = self.client().await?;
        let sql = format!("SELECT {TOKEN_COLUMNS} ORDER BY token");
        query(&client, &sql, &[]).await?.iter().map(token_from_row).collect()
    }

    async fn registration_token(&self, token: &str) -> StoreResult<Option<RegistrationToken>> {
        let client = self.client().await?;
        let sql = format!("SELECT {TOKEN_COLUMNS} WHERE token = $1");
        query_opt(&client, &sql, &[&token]).await?.map(|r| token_from_row(&r)).transpose()
    }

    async fn revoke_registration_token(&self, token: &str, now_ts: u64) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "UPDATE registration_tokens SET revoked_ts = COALESCE(revoked_ts, $2) WHERE token = $1",
            &[&token, &i(now_ts)],
        )
        .await
        .map_err(backend)?;
        Ok(n > 0)
    }

    async fn open_uia_session(
        &self,
        new: &UiaSession,
        expire_before_ts: u64,
        limits: UiaSessionLimits,
    ) -> StoreResult<UiaSession> {
        let completed = serde_json::to_string(&new.completed).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Two nodes counting (or looking for a user's open session) at
        // once would both see room for one more.
        execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&UIA_LOCK]).await.map_err(backend)?;
        execute(&tx, "DELETE FROM uia_sessions WHERE created_ts < $1", &[&i(expire_before_ts)]).await.map_err(backend)?;
        if let Some(user_id) = &new.user_id {
            let sql = format!("SELECT {UIA_COLUMNS} WHERE user_id = $1 AND operation = $2 ORDER BY created_ts DESC LIMIT 1");
            if let Some(open) = query_opt(&tx, &sql, &[user_id, &new.operation]).await? {
                let open = uia_from_row(&open)?;
                tx.commit().await.map_err(backend)?;
                return Ok(open);
            }
            let theirs = query_opt(&tx, "SELECT COUNT(*) FROM uia_sessions WHERE user_id = $1", &[user_id]).await?;
            let theirs: i64 = theirs.map(|r| get(&r, 0)).transpose()?.unwrap_or(0);
            if u(theirs) >= limits.max_per_user {
                return Err(StoreError::TooManyUiaSessions);
            }
        }
        let live = query_opt(&tx, "SELECT COUNT(*) FROM uia_sessions", &[]).await?;
        let live: i64 = live.map(|r| get(&r, 0)).transpose()?.unwrap_or(0);
        if u(live) >= limits.max_sessions {
            return Err(StoreError::TooManyUiaSessions);
        }
        let s = new;
        execute(
            &tx,
            "INSERT INTO uia_sessions (session_id, operation, user_id, completed, registration_token, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&s.session_id, &s.operation, &s.user_id, &completed, &s.registration_token, &i(s.created_ts)],
        )
        .await
        .map_err(unique_or_backend(StoreError::UiaSessionExists))?;
        tx.commit().await.map_err(backend)?;
        Ok(new.clone())
    }

    async fn uia_session(&self, session_id: &str) -> StoreResult<Option<UiaSession>> {
        let client = self.client().await?;
        let sql = format!("SELECT {UIA_COLUMNS} WHERE session_id = $1");
        query_opt(&client, &sql, &[&session_id]).await?.map(|r| uia_from_row(&r)).transpose()
    }

    async fn update_uia_session(&self, session: &UiaSession) -> StoreResult<()> {
        let s = session;
        let completed = serde_json::to_string(&s.completed).map_err(|e| StoreError::Backend(e.to_string()))?;
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE uia_sessions SET user_id = $2, completed = $3, registration_token = $4 WHERE session_id = $1",
            &[&s.session_id, &s.user_id, &completed, &s.registration_token],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()> {
        let client = self.client().await?;
        execute(&client, "DELETE FROM uia_sessions WHERE session_id = $1", &[&session_id]).await.map_err(backend)?;
        Ok(())
    }
}
