//! Randomness and tokens. Components draw random bytes from an [`Entropy`]
//! handed to them at construction (the operating system's in production),
//! so what they generate can be made repeatable in tests.
//!
//! Access and refresh tokens: 256 random bits, handed to the client once,
//! stored only as SHA-256 digests so a database leak yields no sessions.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A source of random bytes.
pub trait Entropy: Send + Sync {
    fn fill(&self, bytes: &mut [u8]);
}

/// The operating system's random numbers.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, bytes: &mut [u8]) {
        rand::rngs::OsRng.fill_bytes(bytes);
    }
}

/// A fresh token with a short prefix telling what it is (`cha_` access,
/// `chr_` refresh), which helps secret scanners and humans.
pub fn generate(entropy: &dyn Entropy, prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    entropy.fill(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The form stored in the database.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random string from `alphabet`, for device ids, session ids, room ids
/// and generated user names.
pub fn random_string(entropy: &dyn Entropy, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| {
            let mut bytes = [0u8; 8];
            entropy.fill(&mut bytes);
            // 64 random bits modulo an alphabet of a few dozen letters: the
            // bias is below 2^-58, and no source can make it loop.
            alphabet[(u64::from_le_bytes(bytes) % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

pub const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hashes_stable() {
        let a = generate(&OsEntropy, "cha_");
        let b = generate(&OsEntropy, "cha_");
        assert_ne!(a, b);
        assert!(a.starts_with("cha_") && a.len() == 4 + 43);
        assert_eq!(hash(&a), hash(&a));
        assert_eq!(hash(&a).len(), 64);
    }

    /// Always the same byte: what a test passes to make ids repeatable.
    struct Constant(u8);

    impl Entropy for Constant {
        fn fill(&self, bytes: &mut [u8]) {
            bytes.fill(self.0);
        }
    }

    #[test]
    fn injected_entropy_decides_what_is_generated() {
        assert_eq!(random_string(&Constant(0), UPPER, 4), "AAAA");
        assert_eq!(random_string(&Constant(0xff), UPPER, 2), "PP", "2^64 - 1 = 15 (mod 26)");
        assert_eq!(generate(&Constant(0), "x_"), format!("x_{}", "A".repeat(43)));
        assert!(random_string(&OsEntropy, LOWER_ALNUM, 12).bytes().all(|b| LOWER_ALNUM.contains(&b)));
    }
}
