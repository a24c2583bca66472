//! The server's ed25519 signing key. Kept in a file (like Synapse's
//! `signing_key_path`) so that nodes sharing one database share the key by
//! sharing the file. Format: one line `ed25519 <version> <base64 PKCS#8>`.

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

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chancery-key-test-{}",
            crate::tokens::random_string(&crate::tokens::OsEntropy, crate::tokens::ALNUM, 8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
