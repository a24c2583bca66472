//! In-memory token buckets, keyed by client address (login, registration)
//! or by user (interactive auth, events, rooms, invites, receipts). Nothing
//! is persisted: per the design, client addresses are not stored, and a
//! restart forgetting the buckets is harmless. Server admins are not
//! limited by the per-user buckets (they run imports and bots).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use chancery_proto::limits::MAX_RATE_LIMITER_KEYS;
use serde::{Deserialize, Serialize};

use crate::{AuthedUser, Error};

/// A sustained rate and a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Login attempts from one client address.
    pub login_per_address: RateLimit,
    /// Login attempts naming one account, from anywhere (slows password
    /// guessing spread over many addresses).
    pub login_per_account: RateLimit,
    /// Registration requests from one client address.
    pub register_per_address: RateLimit,
    /// Calls of one user's operations guarded by interactive auth
    /// (deleting devices, changing the password, deactivating), each
    /// answered or authorised: a client needs two per operation.
    pub uia_per_account: RateLimit,
    /// Events one user sends: messages, state events, redactions.
    pub events_per_user: RateLimit,
    /// Rooms one user creates or upgrades.
    pub rooms_per_user: RateLimit,
    /// Invitations one user sends.
    pub invites_per_user: RateLimit,
    /// Read receipts and read markers one user sets.
    pub receipts_per_user: RateLimit,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_per_address: RateLimit { per_second: 0.1, burst: 10 },
            login_per_account: RateLimit { per_second: 0.05, burst: 10 },
            register_per_address: RateLimit { per_second: 0.05, burst: 5 },
            uia_per_account: RateLimit { per_second: 0.1, burst: 10 },
            events_per_user: RateLimit { per_second: 0.5, burst: 30 },
            rooms_per_user: RateLimit { per_second: 0.05, burst: 10 },
            invites_per_user: RateLimit { per_second: 0.2, burst: 20 },
            receipts_per_user: RateLimit { per_second: 1.0, burst: 30 },
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The key a client address is limited by: an IPv4 address itself, an
/// IPv6 address by its /64 (one subscriber usually holds a whole /64, and
/// would otherwise get a fresh bucket per address), an IPv4-mapped IPv6
/// address as its IPv4 address. Anything else (a proxy's odd header) as
/// given.
pub fn address_key(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", Ipv6Addr::from(network))
            }
        },
        Err(_) => address.to_owned(),
    }
}

pub struct RateLimiter {
    limit: RateLimit,
    enabled: bool,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, enabled: bool) -> Self {
        Self { limit, enabled: enabled && limit.per_second > 0.0, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Error> {
        self.check_at(key, Instant::now())
    }

    /// [`Self::check`] for a user's action; server admins pass.
    pub fn check_user(&self, user: &AuthedUser) -> Result<(), Error> {
        if user.is_admin { Ok(()) } else { self.check(user.user_id.as_str()) }
    }

    /// [`Self::check`] for a client address, keyed by [`address_key`].
    pub fn check_address(&self, address: &str) -> Result<(), Error> {
        self.check(&address_key(address))
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let burst = f64::from(self.limit.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_RATE_LIMITER_KEYS && !buckets.contains_key(key) {
            // Drop every bucket that has refilled: forgetting them changes
            // nothing. If all are busy (a flood of addresses), start over
            // rather than grow without bound.
            let per_second = self.limit.per_second;
            buckets.retain(|_, b| b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst);
            if buckets.len() >= MAX_RATE_LIMITER_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: burst, updated: now });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.limit.per_second;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_s = (1.0 - bucket.tokens) / self.limit.per_second;
            Err(Error::LimitExceeded { retry_after_ms: (wait_s * 1000.0).ceil() as u64 })
        }
    }
}

/// The node's rate limiters, shared by the components whose actions they
/// bound (interactive auth's password stage counts against the account's
/// logins).
pub struct Limiters {
    pub login_per_address: RateLimiter,
    pub login_per_account: RateLimiter,
    pub register_per_address: RateLimiter,
    pub uia_per_account: RateLimiter,
    pub events_per_user: RateLimiter,
    pub rooms_per_user: RateLimiter,
    pub invites_per_user: RateLimiter,
    pub receipts_per_user: RateLimiter,
}

impl Limiters {
    pub fn new(c: &RateLimitConfig) -> Self {
        Self {
            login_per_address: RateLimiter::new(c.login_per_address, c.enabled),
            login_per_account: RateLimiter::new(c.login_per_account, c.enabled),
            register_per_address: RateLimiter::new(c.register_per_address, c.enabled),
            uia_per_account: RateLimiter::new(c.uia_per_account, c.enabled),
            events_per_user: RateLimiter::new(c.events_per_user, c.enabled),
            rooms_per_user: RateLimiter::new(c.rooms_per_user, c.enabled),
            invites_per_user: RateLimiter::new(c.invites_per_user, c.enabled),
            receipts_per_user: RateLimiter::new(c.receipts_per_user, c.enabled),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(RateLimit { per_second: 2.0, burst: 3 }, true);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check_at("a", t0).unwrap();
        }
        match limiter.check_at("a", t0) {
            Err(Error::LimitExceeded { retry_after_ms }) => assert_eq!(retry_after_ms, 500),
            other => panic!("{other:?}"),
        }
        limiter.check_at("b", t0).unwrap();
        limiter.check_at("a", t0 + Duration::from_millis(500)).unwrap();
        assert!(limiter.check_at("a", t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn addresses_are_keyed_by_subscriber() {
        assert_eq!(address_key("192.0.2.7"), "192.0.2.7");
        assert_eq!(address_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(address_key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64", "one /64, one bucket");
        assert_ne!(address_key("2001:db8:1:3::1"), address_key("2001:db8:1:2::1"));
        assert_eq!(address_key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(address_key("not an address"), "not an address");
        // A flood from one /64 is one flood.
        let limiter = RateLimiter::new(RateLimit { per_second: 0.001, burst: 2 }, true);
        limiter.check_address("2001:db8::1").unwrap();
        limiter.check_address("2001:db8::2").unwrap();
        assert!(limiter.check_address("2001:db8::3").is_err());
        limiter.check_address("2001:db8:0:1::3").unwrap();
    }

    #[test]
    fn disabled_never_limits() {
        let limiter = RateLimiter::new(RateLimit { per_second: 0.001, burst: 1 }, false);
        for _ in 0..10 {
            limiter.check("a").unwrap();
        }
    }
}
