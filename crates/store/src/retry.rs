//! Running an operation again when the database gave it up because of a
//! concurrent one ([`StoreError::Conflict`]: a deadlock, a serialization
//! failure). The database rolled it back, so running it again is safe for
//! any operation that is one transaction, which every store method is.
//! Nothing else is retried here: after a lost connection a write may have
//! committed (ARCHITECTURE.md, "Faults").

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use crate::{StoreError, StoreResult};

/// Tries of one operation at most, the first included.
pub const ATTEMPTS: u32 = 4;
/// The longest wait before the second try; it doubles for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Runs `op` until it returns anything but `Conflict`, at most [`ATTEMPTS`]
/// times, with a short jittered wait between tries; the last `Conflict` if
/// every try met one.
pub async fn conflicts<T, F: Future<Output = StoreResult<T>>>(mut op: impl FnMut() -> F) -> StoreResult<T> {
    let mut attempt = 1;
    loop {
        match op().await {
            Err(StoreError::Conflict(why)) if attempt < ATTEMPTS => {
                tracing::debug!(attempt, error = %why, "transaction gave up for a concurrent one; running it again");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The wait after failed try number `attempt` (from 1): uniform between
/// zero and `FIRST_BACKOFF · 2^(attempt-1)` ("full jitter"), so two
/// transactions that deadlocked each other do not meet again in step.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    // A randomly keyed hash of the time is random enough for a jitter and
    // needs no generator.
    let noise = RandomState::new().hash_one(std::time::Instant::now());
    let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(noise % ceiling_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conflicts_are_tried_again_a_bounded_number_of_times() {
        let mut tries = 0;
        let got = conflicts(|| {
            tries += 1;
            let outcome = if tries < 3 { Err(StoreError::Conflict("deadlock".into())) } else { Ok(tries) };
            async move { outcome }
        })
        .await;
        assert_eq!(got.unwrap(), 3);

        let mut tries = 0;
        let got: StoreResult<()> = conflicts(|| {
            tries += 1;
            async { Err(StoreError::Conflict("deadlock".into())) }
        })
        .await;
        assert!(matches!(got, Err(StoreError::Conflict(_))));
        assert_eq!(tries, ATTEMPTS);

        // Anything else is answered at once: an unavailable database, a
        // domain condition.
        for error in [StoreError::Unavailable("down".into()), StoreError::UserIdTaken, StoreError::DiskFull] {
            let mut tries = 0;
            let got: StoreResult<()> = conflicts(|| {
                tries += 1;
                let error = error.clone();
                async move { Err(error) }
            })
            .await;
            assert!(got.is_err());
            assert_eq!(tries, 1, "{error:?}");
        }
    }

    #[test]
    fn backoff_stays_under_its_doubling_ceiling() {
        for attempt in 1..=20 {
            let ceiling = FIRST_BACKOFF * (1 << (attempt - 1).min(10));
            for _ in 0..50 {
                assert!(backoff(attempt) < ceiling, "{attempt}");
            }
        }
    }
}
