//! The server's ed25519 signing key. Kept in a file (like Synapse's
//! `signing_key_path`) so that nodes sharing one database share the key by
//! sharing the file. Format: one line `ed25519 <version> <base64 PKCS#8>`.
//!
//! Keys it replaced ([`rotate`]) stay in `<path>.old`, one line each
//! `ed25519 <version> <base64 public key> <expired_ts>`: the server
//! publishes them as `old_verify_keys` (server-server API "Publishing
//! Keys"), so events it signed with them still verify.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chancery_proto::ruma::signatures::Ed25519KeyPair;

/// Loads the key at `path`, generating and writing a new one if the file
/// does not exist.
pub fn load_or_generate(path: &Path) -> Result<Ed25519KeyPair, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map_err(|e| format!("signing key {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let document = Ed25519KeyPair::generate();
            let version = crate::tokens::random_string(&crate::tokens::OsEntropy, crate::tokens::ALNUM, 6);
            let line = format!("ed25519 {version} {}\n", STANDARD_NO_PAD.encode(&*document));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            write_private(path, &line).map_err(|e| format!("writing {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), version, "generated a new server signing key");
            parse(&line)
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// A key this server signed with before, and when it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub expired_ts: u64,
}

/// The file of the keys the key at `path` replaced.
pub fn old_keys_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".old");
    name.into()
}

/// The keys the key at `path` replaced (none if it never was).
pub fn load_old_keys(path: &Path) -> Result<Vec<OldKey>, String> {
    let old = old_keys_path(path);
    let text = match std::fs::read_to_string(&old) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", old.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace();
            let (Some("ed25519"), Some(version), Some(key), Some(ts), None) =
                (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("{}: expected lines `ed25519 <version> <base64 public key> <expired_ts>`", old.display()));
            };
            let public_key = STANDARD_NO_PAD
                .decode(key.trim_end_matches('='))
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| format!("{}: {version} is not a base64 ed25519 public key", old.display()))?;
            let expired_ts = ts.parse().map_err(|_| format!("{}: {version}: bad expired_ts {ts}", old.display()))?;
            Ok(OldKey { key_id: format!("ed25519:{version}"), public_key, expired_ts })
        })
        .collect()
}

/// Replaces the key at `path` with a new one (another version), keeping
/// the old one's public half in `<path>.old`, expired at `now_ms`. Every
/// node sharing the file must restart to sign with the new key. Returns
/// the old and new key ids.
pub fn rotate(path: &Path, now_ms: u64) -> Result<(String, String), String> {
    let current = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let current = parse(&current).map_err(|e| format!("signing key {}: {e}", path.display()))?;
    let mut version = crate::tokens::random_string(&crate::tokens::OsEntropy, crate::tokens::ALNUM, 6);
    while version == current.version() {
        version = crate::tokens::random_string(&crate::tokens::OsEntropy, crate::tokens::ALNUM, 6);
    }
    let line = format!("ed25519 {} {} {now_ms}\n", current.version(), STANDARD_NO_PAD.encode(current.public_key()));
    {
        use std::io::Write;
        let old = old_keys_path(path);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&old)
            .map_err(|e| format!("opening {}: {e}", old.display()))?;
        file.write_all(line.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| format!("writing {}: {e}", old.display()))?;
    }
    // The new key is written beside and renamed over the old one, so the
    // file always holds a whole key.
    let document = Ed25519KeyPair::generate();
    let fresh = format!("ed25519 {version} {}\n", STANDARD_NO_PAD.encode(&*document));
    let mut temp = path.as_os_str().to_owned();
    temp.push(".new");
    let temp = std::path::PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    write_private(&temp, &fresh).map_err(|e| format!("writing {}: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| format!("replacing {}: {e}", path.display()))?;
    Ok((format!("ed25519:{}", current.version()), format!("ed25519:{version}")))
}

fn parse(text: &str) -> Result<Ed25519KeyPair, String> {
    let mut parts = text.split_whitespace();
    let (Some("ed25519"), Some(version), Some(key), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("expected one line `ed25519 <version> <base64>`".into());
    };
    let der = STANDARD_NO_PAD.decode(key.trim_end_matches('=')).map_err(|e| format!("bad base64: {e}"))?;
    Ed25519KeyPair::from_der(&der, version.to_owned()).map_err(|e| format!("bad key: {e}"))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_key_reloads() {
        let dir = tempfile_dir();
        let path = dir.join("signing.key");
        let a = super::load_or_generate(&path).unwrap();
        let b = super::load_or_generate(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.version(), b.version());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rotation_keeps_the_old_public_key() {
        let dir = tempfile_dir();
        let path = dir.join("signing.key");
        assert!(super::rotate(&path, 5).is_err(), "nothing to rotate yet");
        let first = super::load_or_generate(&path).unwrap();
        assert_eq!(super::load_old_keys(&path).unwrap(), Vec::new());
        let (old, new) = super::rotate(&path, 1_000).unwrap();
        assert_eq!(old, format!("ed25519:{}", first.version()));
        let second = super::load_or_generate(&path).unwrap();
        assert_eq!(new, format!("ed25519:{}", second.version()));
        assert_ne!(first.public_key(), second.public_key());
        super::rotate(&path, 2_000).unwrap();
        let olds = super::load_old_keys(&path).unwrap();
        assert_eq!(olds.len(), 2);
        assert_eq!(olds[0], super::OldKey { key_id: old, public_key: first.public_key().to_vec(), expired_ts: 1_000 });
        assert_eq!((olds[1].public_key.as_slice(), olds[1].expired_ts), (&second.public_key()[..], 2_000));
        std::fs::write(super::old_keys_path(&path), "ed25519 x notbase64 1\n").unwrap();
        assert!(super::load_old_keys(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chancery-key-test-{}",
            crate::tokens::random_string(&crate::tokens::OsEntropy, crate::tokens::ALNUM, 8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
