//! Argon2id password hashing with bounded memory and CPU.
//!
//! One Argon2id computation needs 19 MiB of working memory. Allocating it
//! per hash on the blocking pool leaves the freed memory in the allocator's
//! per-thread arenas (measured: RSS climbing to 2 GB after a few hundred
//! logins). So at most `HASH_SLOTS` hashes run at once, each on a buffer
//! taken from a small pool and put back afterwards: the working memory is
//! allocated once and the process stays small; a flood of logins waits in
//! line instead of using every core. The line itself is bounded
//! (`MAX_QUEUED_PASSWORD_HASHES`): past it, a request is told to retry
//! rather than hold a task and its password in memory for minutes.
//!
//! The pool is per process, not per component: it budgets this process's
//! memory and cores, which every caller of a hash shares.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use chancery_proto::limits::MAX_QUEUED_PASSWORD_HASHES;
use tokio::sync::Semaphore;

use crate::Error;

/// Hashes computed at the same time.
const HASH_SLOTS: usize = 2;

struct HashPool {
    slots: Semaphore,
    buffers: Mutex<Vec<Vec<Block>>>,
    line: Line,
}

static POOL: LazyLock<HashPool> = LazyLock::new(|| HashPool {
    slots: Semaphore::new(HASH_SLOTS),
    buffers: Mutex::new(Vec::new()),
    line: Line::new(MAX_QUEUED_PASSWORD_HASHES),
});

/// Hashes waiting or running, at most `max`.
struct Line {
    len: AtomicUsize,
    max: usize,
}

/// A place in the [`Line`], given back when dropped.
struct Place<'a>(&'a Line);

impl Line {
    const fn new(max: usize) -> Self {
        Self { len: AtomicUsize::new(0), max }
    }

    /// A place, or `None` if the line is full.
    fn join(&self) -> Option<Place<'_>> {
        let before = self.len.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(self))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.len.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs one Argon2id computation on a pooled buffer.
async fn compute(params: Params, password: String, salt: Vec<u8>) -> Result<Vec<u8>, Error> {
    // A full line means seconds of hashing ahead: the client retries.
    let _place = POOL.line.join().ok_or(Error::LimitExceeded { retry_after_ms: 1_000 })?;
    let _slot = POOL.slots.acquire().await.map_err(|_| Error::Internal("hash pool closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let mut buffer = POOL.buffers.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        buffer.resize(params.block_count(), Block::default());
        let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
        let result = Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            &mut buffer[..],
        );
        POOL.buffers.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
        result.map(|()| out).map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

pub(crate) async fn hash(password: String) -> Result<String, Error> {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let params = Params::default();
    let out = compute(params.clone(), password, salt.to_vec()).await?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(e.to_string()))?;
    let output = Output::new(&out).map_err(|e| Error::Internal(e.to_string()))?;
    let mut encoded = [0u8; 128];
    let hash_b64 = output.b64_encode(&mut encoded).map_err(|e| Error::Internal(e.to_string()))?;
    // The PHC string format, as `PasswordHasher` writes it.
    Ok(format!("$argon2id$v=19$m={},t={},p={}${}${}", params.m_cost(), params.t_cost(), params.p_cost(), salt.as_str(), hash_b64))
}

/// Verifies `password` against a stored PHC string. With no stored hash
/// (unknown user, or an account without a password) it still spends the
/// time of one verification, so response times do not tell which user
/// names exist.
pub(crate) async fn verify(password: String, stored: Option<String>) -> Result<bool, Error> {
    let (phc, real) = match &stored {
        Some(phc) => (phc.as_str(), true),
        None => (DUMMY_HASH, false),
    };
    let parsed = PasswordHash::new(phc).map_err(|e| Error::Internal(format!("stored password hash is corrupt: {e}")))?;
    let params = Params::try_from(&parsed).map_err(|e| Error::Internal(format!("stored password hash is corrupt: {e}")))?;
    let expected = parsed.hash.ok_or_else(|| Error::Internal("stored password hash has no hash".into()))?;
    let mut salt_buf = [0u8; 64];
    let salt = parsed
        .salt
        .ok_or_else(|| Error::Internal("stored password hash has no salt".into()))?
        .decode_b64(&mut salt_buf)
        .map_err(|e| Error::Internal(format!("stored password hash is corrupt: {e}")))?
        .to_vec();
    if params.block_count() > Params::DEFAULT.block_count() * 8 {
        return Err(Error::Internal("stored password hash asks for too much memory".into()));
    }
    let out = compute(params, password, salt).await?;
    // Output's equality is constant-time.
    let matches = Output::new(&out).is_ok_and(|o| o == expected);
    Ok(matches && real)
}

/// Argon2id (default parameters) of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0Q1jcJ3+gJ3Gxo36R0cwY4o4s1dXq7XGYg+fpwQnHbQ";

#[cfg(test)]
mod tests {
    #[test]
    fn the_line_is_bounded_and_places_are_given_back() {
        let line = super::Line::new(2);
        let first = line.join().expect("room");
        let second = line.join().expect("room");
        assert!(line.join().is_none(), "full");
        drop(first);
        let third = line.join().expect("a place came free");
        drop((second, third));
        assert_eq!(line.len.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[tokio::test]
    async fn hashes_are_standard_phc_strings() {
        let phc = super::hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // The reference implementation accepts what we write...
        let parsed = argon2::PasswordHash::new(&phc).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        // ...and we accept what it writes.
        let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let theirs = argon2::Argon2::default().hash_password(b"battery staple", &salt).unwrap().to_string();
        assert!(super::verify("battery staple".into(), Some(theirs.clone())).await.unwrap());
        assert!(!super::verify("wrong".into(), Some(theirs)).await.unwrap());
        assert!(!super::verify("anything".into(), None).await.unwrap());
    }
}
