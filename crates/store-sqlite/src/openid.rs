//! `OpenIdStore` on SQLite: OpenID tokens.

use async_trait::async_trait;
use chancery_store::{NewOpenIdToken, OpenIdStore, StoreError, StoreResult};
use chancery_store_sql::i;
use rusqlite::{OptionalExtension, params};

use crate::accounts::is_unique_violation;
use crate::{SqliteStore, backend};

#[async_trait]
impl OpenIdStore for SqliteStore {
    async fn save_openid_token(&self, token: &NewOpenIdToken, now_ts: u64, max_per_user: usize) -> StoreResult<()> {
        let token = token.clone();
        self.write(move |tx| {
            tx.execute("DELETE FROM openid_tokens WHERE user_id = ?1 AND expires_ts <= ?2", params![token.user_id, i(now_ts)])
                .map_err(backend)?;
            // Make room for this one: keep the user's newest
            // `max_per_user - 1`.
            let keep = i(u64::try_from(max_per_user.saturating_sub(1)).unwrap_or(u64::MAX));
            tx.execute(
                "DELETE FROM openid_tokens WHERE token_hash IN
                   (SELECT token_hash FROM openid_tokens WHERE user_id = ?1
                    ORDER BY created_ts DESC, token_hash DESC LIMIT -1 OFFSET ?2)",
                params![token.user_id, keep],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO openid_tokens (token_hash, user_id, expires_ts, created_ts) VALUES (?1, ?2, ?3, ?4)",
                params![token.token_hash, token.user_id, i(token.expires_ts), i(token.created_ts)],
            )
            .map_err(|e| {
                if is_unique_violation(&e) { StoreError::Contract("an OpenID token was saved twice") } else { backend(e) }
            })?;
            Ok(())
        })
        .await
    }

    async fn openid_token_user(&self, token_hash: &str, now_ts: u64) -> StoreResult<Option<String>> {
        let token_hash = token_hash.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT t.user_id FROM openid_tokens t JOIN accounts a ON a.user_id = t.user_id
                 WHERE t.token_hash = ?1 AND t.expires_ts > ?2 AND a.deactivated_ts IS NULL",
                params![token_hash, i(now_ts)],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn delete_expired_openid_tokens(&self, now_ts: u64) -> StoreResult<u64> {
        self.write(move |tx| {
            let deleted = tx.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?1", [i(now_ts)]).map_err(backend)?;
            Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
        })
        .await
    }
}
