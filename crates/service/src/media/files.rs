//! Media files on disk, named by the SHA-256 of their bytes, so two
//! uploads of the same bytes share one file.
//!
//! Layout: `<root>/<first two hex digits>/<sha256>`, and `<root>/tmp/` for
//! files being written. A file is written whole to `tmp/` (streamed in
//! bounded chunks, hashed on the way), flushed to disk (`fsync`), then
//! renamed into place (atomic within the root's filesystem) and its
//! directory flushed; only then does the caller write the metadata row.
//! So a crash leaves a temporary file or a file without a row, both
//! garbage [`FileStore::collect_garbage`] removes, and never a row whose
//! file is partial. Files are only ever read through a row.
//!
//! Placing and removing a file happen under a lock of its hash (one of
//! [`STRIPES`]), held by the caller across the row's write: an upload of
//! bytes whose last row is being deleted either keeps the file or writes
//! it again, never loses it. The lock is per node: nodes sharing one
//! media directory (PostgreSQL deployments) are covered by the
//! collector's grace period for files just placed, not by the lock
//! (ARCHITECTURE.md, "Media").

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, MutexGuard};

use crate::tokens::{ALNUM, Entropy, random_string};

/// A request body: chunks as the client sends them.
pub type UploadBody = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// Locks over the hash space: enough that unrelated uploads rarely meet.
const STRIPES: usize = 64;

/// Temporary files older than this are abandoned uploads (an upload is
/// bounded well below it by the API's upload timeout).
pub(crate) const TEMP_GRACE: Duration = Duration::from_secs(2 * 60 * 60);
/// Files without a row younger than this are left alone by the collector:
/// their row may be on its way (on another node, outside our lock).
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_secs(60 * 60);

/// Why receiving an upload failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upload did not arrive whole: {0}")]
    Body(io::Error),
    #[error("no chunk of the upload arrived within {0:?}")]
    Stalled(Duration),
    #[error("writing the upload failed: {0}")]
    Disk(io::Error),
}

/// A file written whole to `tmp/`, flushed, not yet in place. Removed when
/// dropped unless placed.
pub(crate) struct Received {
    temp: Option<PathBuf>,
    pub sha256: String,
    pub size_bytes: u64,
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Some(path) = self.temp.take() {
            // A small unlink; an error leaves garbage for the collector.
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(crate) struct FileStore {
    root: PathBuf,
    stripes: Vec<Mutex<()>>,
}

/// Lower-case hex, 64 digits: the only names files here have. A hash read
/// from the database is checked before it becomes a path.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `fsync` of a directory, so a rename or unlink in it survives a crash.
async fn sync_dir(dir: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await.map_err(io::Error::other)?
}

impl FileStore {
    /// Opens (creating) the media directory with its shards and `tmp/`.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        for shard in 0..=255u8 {
            std::fs::create_dir_all(root.join(format!("{shard:02x}")))?;
        }
        std::fs::File::open(root)?.sync_all()?;
        Ok(Self { root: root.to_owned(), stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() })
    }

    /// The path of the file of `sha256`; `None` for anything but a hash.
    pub(crate) fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        is_sha256_hex(sha256).then(|| self.root.join(&sha256[..2]).join(sha256))
    }

    /// The lock of a hash's file: held across placing (or removing) it and
    /// writing (or deleting) the rows that reference it.
    pub(crate) async fn lock(&self, sha256: &str) -> MutexGuard<'_, ()> {
        let stripe = u8::from_str_radix(sha256.get(..2).unwrap_or("00"), 16).unwrap_or(0) as usize % STRIPES;
        self.stripes[stripe].lock().await
    }

    fn temp_path(&self, entropy: &dyn Entropy) -> PathBuf {
        self.root.join("tmp").join(format!("{}.part", random_string(entropy, ALNUM, 24)))
    }

    /// Streams `body` to a temporary file, hashing it, at most `max_bytes`
    /// of it, each chunk within `idle_timeout` of the last; then flushes
    /// the file to disk. The body is never held whole in memory.
    pub(crate) async fn receive(
        &self,
        mut body: UploadBody,
        max_bytes: u64,
        idle_timeout: Duration,
        entropy: &dyn Entropy,
    ) -> Result<Received, ReceiveError> {
        let path = self.temp_path(entropy);
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await.map_err(ReceiveError::Disk)?;
        // From here on the guard removes the file on any early return.
        let mut received = Received { temp: Some(path), sha256: String::new(), size_bytes: 0 };
        let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        let mut hasher = Sha256::new();
        loop {
            let chunk = match tokio::time::timeout(idle_timeout, body.next()).await {
                Err(_) => return Err(ReceiveError::Stalled(idle_timeout)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ReceiveError::Body(e)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            received.size_bytes = received.size_bytes.saturating_add(chunk.len() as u64);
            if received.size_bytes > max_bytes {
                return Err(ReceiveError::TooLarge(max_bytes));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(ReceiveError::Disk)?;
        }
        file.flush().await.map_err(ReceiveError::Disk)?;
        file.get_ref().sync_all().await.map_err(ReceiveError::Disk)?;
        received.sha256 = hex(&hasher.finalize());
        Ok(received)
    }

    /// Writes `bytes` (a thumbnail) to a temporary file like [`Self::receive`].
    pub(crate) async fn receive_bytes(&self, bytes: Vec<u8>, entropy: &dyn Entropy) -> io::Result<Received> {
        let path = self.temp_path(entropy);
        let sha256 = hex(&Sha256::digest(&bytes));
        let size_bytes = bytes.len() as u64;
        let received = Received { temp: Some(path.clone()), sha256, size_bytes };
        let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await?;
        file.write_all(&bytes).await?;
        file.sync_all().await?;
        Ok(received)
    }

    /// Puts a received file in place under its hash (the caller holds
    /// [`Self::lock`] of it): if the hash's file exists already, the same
    /// bytes are there and the temporary file goes. Returns whether a new
    /// file was placed.
    pub(crate) async fn place(&self, received: &mut Received) -> io::Result<bool> {
        let target = self.path_of(&received.sha256).ok_or_else(|| io::Error::other("not a SHA-256 name"))?;
        let Some(temp) = received.temp.take() else { return Ok(false) };
        if tokio::fs::try_exists(&target).await? {
            // Touched, so the collector's grace period starts again for a
            // file a row is about to reference anew.
            let _ = tokio::fs::remove_file(&temp).await;
            let _ = touch(&target).await;
            return Ok(false);
        }
        if let Err(e) = tokio::fs::rename(&temp, &target).await {
            received.temp = Some(temp);
            return Err(e);
        }
        if let Some(dir) = target.parent() {
            sync_dir(dir.to_owned()).await?;
        }
        Ok(true)
    }

    /// Opens a hash's file for reading.
    pub(crate) async fn open_file(&self, sha256: &str) -> io::Result<tokio::fs::File> {
        let path = self.path_of(sha256).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not a SHA-256 name"))?;
        tokio::fs::File::open(path).await
    }

    /// Removes a hash's file (the caller holds [`Self::lock`] of it and
    /// knows no row references it). A file already gone is fine.
    pub(crate) async fn remove(&self, sha256: &str) -> io::Result<()> {
        let Some(path) = self.path_of(sha256) else { return Ok(()) };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir.to_owned()).await?;
        }
        Ok(())
    }

    /// Removes temporary files older than [`TEMP_GRACE`], and lists the
    /// content files older than [`ORPHAN_GRACE`] (at most `limit`), which
    /// the caller checks against the rows. Every loop is bounded by the
    /// directory's size and `limit`.
    pub(crate) async fn sweep(&self, limit: usize) -> io::Result<(usize, Vec<String>)> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            let old = |meta: &std::fs::Metadata, grace: Duration| {
                meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > grace)
            };
            let mut temps = 0;
            for entry in std::fs::read_dir(root.join("tmp"))? {
                let entry = entry?;
                if entry.metadata().is_ok_and(|m| m.is_file() && old(&m, TEMP_GRACE))
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    temps += 1;
                }
            }
            let mut candidates = Vec::new();
            'shards: for shard in 0..=255u8 {
                for entry in std::fs::read_dir(root.join(format!("{shard:02x}")))? {
                    if candidates.len() >= limit {
                        break 'shards;
                    }
                    let entry = entry?;
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                    if is_sha256_hex(&name) && entry.metadata().is_ok_and(|m| m.is_file() && old(&m, ORPHAN_GRACE)) {
                        candidates.push(name);
                    }
                }
            }
            Ok((temps, candidates))
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Sets a file's modification time to now.
async fn touch(path: &Path) -> io::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::options().append(true).open(&path)?.set_modified(SystemTime::now()))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::OsEntropy;

    fn body(chunks: &[&'static [u8]]) -> UploadBody {
        let chunks: Vec<Result<Bytes, io::Error>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    fn temp_files(root: &Path) -> usize {
        std::fs::read_dir(root.join("tmp")).unwrap().count()
    }

    #[tokio::test]
    async fn a_file_is_placed_whole_under_its_hash_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::open(dir.path()).unwrap();
        let second = Duration::from_secs(1);
        let mut a = files.receive(body(&[b"hello ", b"world"]), 100, second, &OsEntropy).await.unwrap();
        // sha256("hello world")
        assert_eq!(a.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        assert_eq!(a.size_bytes, 11);
        assert_eq!(temp_files(dir.path()), 1);
        assert!(files.place(&mut a).await.unwrap());
        let path = files.path_of(&a.sha256).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        let mut b = files.receive(body(&[b"hello world"]), 100, second, &OsEntropy).await.unwrap();
        assert!(!files.place(&mut b).await.unwrap(), "the same bytes share the file");
        drop((a, b));
        assert_eq!(temp_files(dir.path()), 0);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        files.remove("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9").await.unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn an_upload_that_fails_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::open(dir.path()).unwrap();
        let second = Duration::from_secs(1);
        let too_large = files.receive(body(&[b"12345", b"67890"]), 8, second, &OsEntropy).await;
        assert!(matches!(too_large, Err(ReceiveError::TooLarge(8))));
        let broken: UploadBody =
            Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err(io::Error::other("reset"))]));
        assert!(matches!(files.receive(broken, 100, second, &OsEntropy).await, Err(ReceiveError::Body(_))));
        let stalled: UploadBody = Box::pin(futures_util::stream::pending());
        let stalled = files.receive(stalled, 100, Duration::from_millis(10), &OsEntropy).await;
        assert!(matches!(stalled, Err(ReceiveError::Stalled(_))));
        // A received file dropped before it is placed is gone too.
        drop(files.receive(body(&[b"x"]), 100, second, &OsEntropy).await.unwrap());
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[test]
    fn only_hashes_name_files() {
        let files = FileStore { root: PathBuf::from("/m"), stripes: Vec::new() };
        let hash = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        assert_eq!(files.path_of(hash), Some(PathBuf::from(format!("/m/b9/{hash}"))));
        for bad in ["", "../../etc/passwd", &hash.to_uppercase(), &hash[1..], &format!("{}/", &hash[1..])] {
            assert_eq!(files.path_of(bad), None, "{bad}");
        }
    }
}
