//! `OpenIdStore` on PostgreSQL: OpenID tokens.

use async_trait::async_trait;
use chancery_store::{NewOpenIdToken, OpenIdStore, StoreError, StoreResult};
use chancery_store_sql::i;
use tokio_postgres::error::SqlState;

use crate::query::{execute, get, query_opt};
use crate::{PostgresStore, backend};

/// Class of the per-user advisory lock that keeps a user's tokens within
/// their bound when two nodes save one at once.
const TOKENS_LOCK: i32 = 0x6f69_6463; // "oidc"

#[async_trait]
impl OpenIdStore for PostgresStore {
    async fn save_openid_token(&self, token: &NewOpenIdToken, now_ts: u64, max_per_user: usize) -> StoreResult<()> {
        let keep = i(u64::try_from(max_per_user.saturating_sub(1)).unwrap_or(u64::MAX));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        execute(&tx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&TOKENS_LOCK, &token.user_id]).await.map_err(backend)?;
        execute(&tx, "DELETE FROM openid_tokens WHERE user_id = $1 AND expires_ts <= $2", &[&token.user_id, &i(now_ts)])
            .await
            .map_err(backend)?;
        execute(
            &tx,
            "DELETE FROM openid_tokens WHERE token_hash IN
               (SELECT token_hash FROM openid_tokens WHERE user_id = $1
                ORDER BY created_ts DESC, token_hash DESC OFFSET $2)",
            &[&token.user_id, &keep],
        )
        .await
        .map_err(backend)?;
        execute(
            &tx,
            "INSERT INTO openid_tokens (token_hash, user_id, expires_ts, created_ts) VALUES ($1, $2, $3, $4)",
            &[&token.token_hash, &token.user_id, &i(token.expires_ts), &i(token.created_ts)],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                StoreError::Contract("an OpenID token was saved twice")
            } else {
                backend(e)
            }
        })?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn openid_token_user(&self, token_hash: &str, now_ts: u64) -> StoreResult<Option<String>> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT t.user_id FROM openid_tokens t JOIN accounts a ON a.user_id = t.user_id
             WHERE t.token_hash = $1 AND t.expires_ts > $2 AND a.deactivated_ts IS NULL",
            &[&token_hash, &i(now_ts)],
        )
        .await?;
        row.map(|r| get(&r, 0)).transpose()
    }

    async fn delete_expired_openid_tokens(&self, now_ts: u64) -> StoreResult<u64> {
        let client = self.client().await?;
        execute(&client, "DELETE FROM openid_tokens WHERE expires_ts <= $1", &[&i(now_ts)]).await.map_err(backend)
    }
}
