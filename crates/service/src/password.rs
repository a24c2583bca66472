//! Argon2id password hashing, on the blocking pool: a hash takes tens of
//! milliseconds of CPU and must not stall the async workers.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};

use crate::Error;

pub(crate) async fn hash(password: String) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// Verifies `password` against a stored PHC string. With no stored hash
/// (unknown user, or an account without a password) it still spends the
/// time of one verification, so response times do not tell which user
/// names exist.
pub(crate) async fn verify(password: String, stored: Option<String>) -> Result<bool, Error> {
    tokio::task::spawn_blocking(move || {
        let (phc, real) = match &stored {
            Some(phc) => (phc.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let parsed = PasswordHash::new(phc).map_err(|e| Error::Internal(format!("stored password hash is corrupt: {e}")))?;
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(ok && real)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// Argon2id (default parameters) of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0Q1jcJ3+gJ3Gxo36R0cwY4o4s1dXq7XGYg+fpwQnHbQ";
