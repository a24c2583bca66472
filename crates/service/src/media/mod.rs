//! The content repository (spec "Content repository"): uploads, including
//! asynchronous ones (`POST /_matrix/media/v1/create`, then `PUT
//! /_matrix/media/v3/upload/{serverName}/{mediaId}`), authenticated
//! downloads and thumbnails, URL previews (off by default), quotas,
//! quarantine and deletion for admins.
//!
//! Files are content-addressed on disk ([`files`]); metadata is in the
//! store ([`MediaStore`]); a row is written only after its file is whole
//! on disk. Downloads and thumbnails go through [`DeliveryCheck`] (where a
//! virus scanner plugs in) and are served as files the API streams.
//! Media of other servers is answered 404 `M_NOT_FOUND`: this server does
//! not federate yet, and that is the spec's answer for media it cannot get.

mod content_type;
mod files;
mod opengraph;
pub mod preview;
mod scan;
mod thumbnail;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chancery_proto::limits::{
    MAX_MEDIA_DOWNLOAD_WAIT_MS, MAX_MEDIA_DOWNLOAD_WAITERS, MAX_MEDIA_FILE_NAME_BYTES, MAX_MEDIA_ID_BYTES,
    MAX_PENDING_MEDIA_PER_USER, MAX_QUEUED_THUMBNAILS, MAX_THUMBNAIL_SOURCE_BYTES, PENDING_MEDIA_TTL_MS, THUMBNAIL_WAIT_MS,
};
use chancery_proto::ruma::{OwnedServerName, ServerName};
use chancery_store::{MediaContent, MediaStore, NewMedia, PendingMedia, StoreResult, StoredThumbnail, ThumbnailKey};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde_json::{Value as JsonValue, json};
use tokio::sync::{Notify, Semaphore};

pub use chancery_store::ThumbnailMethod;
pub use content_type::{OCTET_STREAM, is_inline};
pub use files::UploadBody;
pub use preview::{IpRange, UrlPreviewConfig};
pub use scan::{DeliveryCheck, DeliverySubject, DeliveryVerdict};

use crate::clock::Clock;
use crate::tokens::{ALNUM, Entropy, random_string};
use crate::{AuthedUser, Error};
use files::{FileStore, ReceiveError, Received};
use thumbnail::{Plan, ThumbnailError};

/// Media ids are this many letters and digits (143 bits).
const MEDIA_ID_LEN: usize = 24;
/// A waiting download looks at the store at least this often, for content
/// another node received (this node's uploads wake it at once).
const PENDING_RECHECK: Duration = Duration::from_secs(1);
/// Files the collector looks at per pass, and per store read.
const GARBAGE_FILES_PER_PASS: usize = 10_000;
const GARBAGE_BATCH: usize = 500;

/// The message for media of other servers.
const REMOTE_MEDIA: &str = "this server does not fetch media from other servers (no federation yet)";

/// What the component is configured with.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub server_name: OwnedServerName,
    /// Where files live (`<data_dir>/media` by default). Nodes sharing a
    /// database must share this directory.
    pub directory: std::path::PathBuf,
    pub max_upload_bytes: u64,
    pub max_bytes_per_user: u64,
    /// The boxes thumbnails are made for (spec "Thumbnails": 32×32 and
    /// 96×96 crop, 320×240, 640×480 and 800×600 scale by default).
    pub thumbnail_sizes: Vec<ThumbnailKey>,
    /// Images decoded at once on this node.
    pub max_concurrent_thumbnails: usize,
    /// An upload's next chunk must come within this time.
    pub upload_idle_timeout: Duration,
    /// `None`: `preview_url` is not served.
    pub url_preview: Option<UrlPreviewConfig>,
}

/// The spec's recommended thumbnail boxes.
pub fn default_thumbnail_sizes() -> Vec<ThumbnailKey> {
    use ThumbnailMethod::{Crop, Scale};
    [(32, 32, Crop), (96, 96, Crop), (320, 240, Scale), (640, 480, Scale), (800, 600, Scale)]
        .into_iter()
        .map(|(width, height, method)| ThumbnailKey { width, height, method })
        .collect()
}

pub struct MediaDeps {
    pub config: MediaConfig,
    pub store: Arc<dyn MediaStore>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
    /// Asked before anything is delivered; `None` delivers everything.
    pub delivery_check: Option<Arc<dyn DeliveryCheck>>,
}

/// What an upload says of itself besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    /// The request's `Content-Length`, when it has one: refused before
    /// reading if over the limit or the quota.
    pub declared_bytes: Option<u64>,
}

/// A media id created ahead of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedMedia {
    pub content_uri: String,
    pub unused_expires_at_ms: u64,
}

/// A file to send, with what the answer's headers say of it.
#[derive(Debug)]
pub struct Served {
    pub file: tokio::fs::File,
    pub size_bytes: u64,
    /// Well formed, safe to send as it is.
    pub content_type: String,
    /// `inline` (only for types that cannot run script) or `attachment`.
    pub inline: bool,
    pub file_name: Option<String>,
}

/// `GET /_matrix/client/v1/media/thumbnail/...`.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailRequest {
    pub width: u32,
    pub height: u32,
    pub method: ThumbnailMethod,
    pub animated: Option<bool>,
    pub timeout: Duration,
}

/// What one pass of [`Media::collect_garbage`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GarbageReport {
    pub expired_pending: u64,
    pub temporary_files: usize,
    pub orphan_files: usize,
}

/// The content repository's component.
pub struct Media {
    config: MediaConfig,
    store: Arc<dyn MediaStore>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    files: Arc<FileStore>,
    waiters: Waiters,
    thumbnails: Thumbnailer,
    preview: Option<preview::Previewer>,
    delivery_check: Option<Arc<dyn DeliveryCheck>>,
}

/// A media id is `[A-Za-z0-9_-]+` (spec "Matrix Content URIs"); anything
/// else names nothing here.
fn is_valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= MAX_MEDIA_ID_BYTES
        && media_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn disk_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::StorageFull {
        tracing::error!("the media directory's disk is full: uploads fail until space is freed");
        return Error::Unavailable {
            message: "the server's disk is full: nothing can be uploaded until its operator frees space".into(),
            retry_after_ms: 60_000,
        };
    }
    Error::Internal(format!("media file: {e}"))
}

fn receive_error(e: ReceiveError) -> Error {
    match e {
        ReceiveError::TooLarge(max) => Error::TooLarge(format!("uploads are limited to {max} bytes")),
        ReceiveError::Body(_) | ReceiveError::Stalled(_) => Error::Unknown(e.to_string()),
        ReceiveError::Disk(e) => disk_error(e),
    }
}

fn thumbnail_error(e: ThumbnailError) -> Error {
    match e {
        // Spec: 400 when the server cannot thumbnail the content.
        ThumbnailError::Undecodable => Error::Unknown("Cannot generate thumbnails for the requested content".into()),
        ThumbnailError::TooLarge => Error::TooLarge("Content is too large to thumbnail".into()),
        ThumbnailError::Io(e) => Error::Internal(format!("reading an image: {e}")),
    }
}

impl Media {
    /// Opens the media directory (creating it) and builds the component.
    pub fn new(deps: MediaDeps) -> std::io::Result<Self> {
        let files = Arc::new(FileStore::open(&deps.config.directory)?);
        let thumbnails = Thumbnailer {
            permits: Arc::new(Semaphore::new(deps.config.max_concurrent_thumbnails.max(1))),
            jobs: Arc::new(Mutex::new(HashMap::new())),
        };
        let preview = deps.config.url_preview.clone().map(preview::Previewer::new).transpose()?;
        Ok(Self {
            store: deps.store,
            clock: deps.clock,
            entropy: deps.entropy,
            files,
            waiters: Waiters::default(),
            thumbnails,
            preview,
            delivery_check: deps.delivery_check,
            config: deps.config,
        })
    }

    /// The largest upload (`m.upload.size` of `/media/config`).
    pub fn max_upload_bytes(&self) -> u64 {
        self.config.max_upload_bytes
    }

    /// Whether `preview_url` is served.
    pub fn url_preview_enabled(&self) -> bool {
        self.preview.is_some()
    }

    fn mxc(&self, media_id: &str) -> String {
        format!("mxc://{}/{media_id}", self.config.server_name)
    }

    fn check_meta(&self, meta: &UploadMeta) -> Result<(), Error> {
        if meta.declared_bytes.is_some_and(|n| n > self.config.max_upload_bytes) {
            return Err(Error::TooLarge(format!("uploads are limited to {} bytes", self.config.max_upload_bytes)));
        }
        if meta.file_name.as_ref().is_some_and(|n| n.len() > MAX_MEDIA_FILE_NAME_BYTES) {
            return Err(Error::InvalidParam(format!("file names are at most {MAX_MEDIA_FILE_NAME_BYTES} bytes")));
        }
        if meta.file_name.as_ref().is_some_and(|n| n.contains('\0')) {
            return Err(Error::InvalidParam("invalid file name".into()));
        }
        Ok(())
    }

    /// Refuses before reading a body that the quota cannot take anyway
    /// (the store checks again when it records the upload).
    async fn check_quota(&self, user: &AuthedUser, declared_bytes: Option<u64>) -> Result<(), Error> {
        let used = self.store.media_usage_bytes(user.user_id.as_str()).await?;
        if used.saturating_add(declared_bytes.unwrap_or(0)) > self.config.max_bytes_per_user
            || (declared_bytes.is_none() && used >= self.config.max_bytes_per_user)
        {
            return Err(chancery_store::StoreError::MediaQuotaExceeded.into());
        }
        Ok(())
    }

    fn new_media(&self, media_id: String, uploader: Option<String>, meta: UploadMeta, received: &Received) -> NewMedia {
        // A type too long or malformed is kept out (it would be served as
        // octet-stream anyway).
        let content_type = meta.content_type.filter(|ct| content_type::is_well_formed(ct));
        NewMedia {
            media_id,
            uploader,
            content_type,
            file_name: meta.file_name,
            size_bytes: received.size_bytes,
            sha256: received.sha256.clone(),
            uploaded_ts: self.clock.now_ms(),
        }
    }

    /// Puts a received file in place and records it with `write`, under
    /// the lock of its hash; a file placed for a write that failed goes
    /// again.
    async fn commit<F, Fut>(&self, mut received: Received, write: F) -> Result<(), Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<()>>,
    {
        let sha256 = received.sha256.clone();
        let _lock = self.files.lock(&sha256).await;
        let placed = self.files.place(&mut received).await.map_err(disk_error)?;
        match write().await {
            Ok(()) => Ok(()),
            Err(e) => {
                if placed {
                    self.remove_if_unreferenced_locked(&sha256).await;
                }
                Err(e.into())
            }
        }
    }

    /// Removes a file no row references (the caller holds its lock).
    async fn remove_if_unreferenced_locked(&self, sha256: &str) -> bool {
        match self.store.unreferenced_media_hashes(&[sha256.to_owned()]).await {
            Ok(free) if !free.is_empty() => match self.files.remove(sha256).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "removing an unreferenced media file failed; the collector retries");
                    false
                }
            },
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not tell whether a media file is still used; the collector retries");
                false
            }
        }
    }

    /// `POST /_matrix/media/v3/upload`: streams the body to disk and
    /// returns its `mxc://` URI.
    pub async fn upload(&self, user: &AuthedUser, meta: UploadMeta, body: UploadBody) -> Result<String, Error> {
        self.check_meta(&meta)?;
        self.check_quota(user, meta.declared_bytes).await?;
        let received = self
            .files
            .receive(body, self.config.max_upload_bytes, self.config.upload_idle_timeout, &*self.entropy)
            .await
            .map_err(receive_error)?;
        let media_id = random_string(&*self.entropy, ALNUM, MEDIA_ID_LEN);
        let media = self.new_media(media_id.clone(), Some(user.user_id.to_string()), meta, &received);
        let quota = self.config.max_bytes_per_user;
        self.commit(received, || self.store.store_media(media, quota)).await?;
        Ok(self.mxc(&media_id))
    }

    /// `POST /_matrix/media/v1/create`: a media id whose content comes
    /// later, within [`PENDING_MEDIA_TTL_MS`].
    pub async fn create(&self, user: &AuthedUser) -> Result<CreatedMedia, Error> {
        let now = self.clock.now_ms();
        let media_id = random_string(&*self.entropy, ALNUM, MEDIA_ID_LEN);
        let expires_ts = now.saturating_add(PENDING_MEDIA_TTL_MS);
        let pending =
            PendingMedia { media_id: media_id.clone(), uploader: user.user_id.to_string(), created_ts: now, expires_ts };
        self.store.create_pending_media(pending, now, MAX_PENDING_MEDIA_PER_USER).await?;
        Ok(CreatedMedia { content_uri: self.mxc(&media_id), unused_expires_at_ms: expires_ts })
    }

    /// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: the content of
    /// a created id, by its creator, once (409 `M_CANNOT_OVERWRITE_MEDIA`
    /// after). Wakes the downloads waiting for it.
    pub async fn upload_to(
        &self,
        user: &AuthedUser,
        server_name: &ServerName,
        media_id: &str,
        meta: UploadMeta,
        body: UploadBody,
    ) -> Result<(), Error> {
        if server_name != self.config.server_name || !is_valid_media_id(media_id) {
            return Err(Error::NotFound("unknown media id".into()));
        }
        self.check_meta(&meta)?;
        // Refused before the body is read: someone else's id, an unknown
        // or expired one, one with content (the store checks again).
        let now = self.clock.now_ms();
        match self.store.media(media_id).await? {
            None => return Err(Error::NotFound("unknown media id".into())),
            Some(r) if r.content.is_some() => return Err(Error::CannotOverwriteMedia),
            Some(r) if r.unused_expires_ts.is_some_and(|t| t <= now) => {
                return Err(Error::NotFound("unknown media id".into()));
            }
            Some(r) if r.uploader.as_deref() != Some(user.user_id.as_str()) => {
                return Err(chancery_store::StoreError::NotMediaCreator.into());
            }
            Some(_) => {}
        }
        self.check_quota(user, meta.declared_bytes).await?;
        let received = self
            .files
            .receive(body, self.config.max_upload_bytes, self.config.upload_idle_timeout, &*self.entropy)
            .await
            .map_err(receive_error)?;
        let media = self.new_media(media_id.to_owned(), Some(user.user_id.to_string()), meta, &received);
        let quota = self.config.max_bytes_per_user;
        let now = self.clock.now_ms();
        self.commit(received, || self.store.complete_pending_media(media, now, quota)).await?;
        self.waiters.wake(media_id);
        Ok(())
    }

    /// The content of a local media item, waiting up to `timeout` (bounded
    /// by [`MAX_MEDIA_DOWNLOAD_WAIT_MS`]) for a pending one's. Unknown,
    /// expired, quarantined and remote media are all 404 `M_NOT_FOUND`;
    /// content that does not come in time is 504 `M_NOT_YET_UPLOADED`.
    async fn content_of(&self, server_name: &ServerName, media_id: &str, timeout: Duration) -> Result<MediaContent, Error> {
        if server_name != self.config.server_name {
            return Err(Error::NotFound(REMOTE_MEDIA.into()));
        }
        let not_found = || Error::NotFound("Not found".into());
        if !is_valid_media_id(media_id) {
            return Err(not_found());
        }
        let timeout = timeout.min(Duration::from_millis(MAX_MEDIA_DOWNLOAD_WAIT_MS));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiter: Option<WaitGuard<'_>> = None;
        // Each round ends with a wake-up or a recheck, so this many rounds
        // outlast the longest wait.
        let rounds = MAX_MEDIA_DOWNLOAD_WAIT_MS / PENDING_RECHECK.as_millis() as u64 + 4;
        for _ in 0..rounds {
            let notify = waiter.as_ref().map(WaitGuard::notify);
            let notified = notify.as_ref().map(|n| n.notified());
            let mut notified = notified.map(Box::pin);
            if let Some(n) = notified.as_mut() {
                // Registered before the read: an upload committing after
                // the read still wakes this wait.
                n.as_mut().enable();
            }
            let record = self.store.media(media_id).await?.ok_or_else(not_found)?;
            if record.quarantined {
                return Err(not_found());
            }
            if let Some(content) = record.content {
                return Ok(content);
            }
            if record.unused_expires_ts.is_some_and(|t| t <= self.clock.now_ms()) {
                return Err(not_found());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::NotYetUploaded);
            }
            match notified {
                Some(n) => {
                    let _ = tokio::time::timeout((deadline - now).min(PENDING_RECHECK), n).await;
                }
                // First round: register, then read again at once.
                None => waiter = Some(self.waiters.register(media_id).ok_or(Error::NotYetUploaded)?),
            }
        }
        Err(Error::NotYetUploaded)
    }

    async fn check_delivery(&self, media_id: &str, content: &MediaContent) -> Result<(), Error> {
        let Some(check) = &self.delivery_check else { return Ok(()) };
        let path = self.files.path_of(&content.sha256).ok_or_else(|| Error::Internal("a media row has no file name".into()))?;
        let subject = DeliverySubject {
            media_id,
            sha256: &content.sha256,
            content_type: content.content_type.as_deref(),
            size_bytes: content.size_bytes,
            path: &path,
        };
        match check.check(&subject).await? {
            DeliveryVerdict::Deliver => Ok(()),
            DeliveryVerdict::Refuse { reason } => Err(Error::Forbidden(reason)),
        }
    }

    async fn open(&self, sha256: &str) -> Result<tokio::fs::File, Error> {
        self.files.open_file(sha256).await.map_err(|e| {
            // A row always has its file; one missing is a damaged store.
            tracing::error!(error = %e, "a media row's file cannot be opened");
            Error::Internal(format!("media file: {e}"))
        })
    }

    /// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`:
    /// the file as uploaded, with its type if well formed and the file
    /// name given in the path, or else the one it was uploaded with.
    pub async fn download(
        &self,
        _user: &AuthedUser,
        server_name: &ServerName,
        media_id: &str,
        file_name: Option<String>,
        timeout: Duration,
    ) -> Result<Served, Error> {
        let content = self.content_of(server_name, media_id, timeout).await?;
        self.check_delivery(media_id, &content).await?;
        let file = self.open(&content.sha256).await?;
        let content_type = content_type::served(content.content_type.as_deref());
        Ok(Served {
            file,
            size_bytes: content.size_bytes,
            inline: is_inline(&content_type),
            content_type,
            file_name: file_name.or(content.file_name),
        })
    }

    fn served_thumbnail(&self, file: tokio::fs::File, size_bytes: u64, content_type: &str) -> Served {
        let extension = content_type.rsplit('/').next().unwrap_or("png");
        Served {
            file,
            size_bytes,
            content_type: content_type.to_owned(),
            inline: true,
            file_name: Some(format!("thumbnail.{extension}")),
        }
    }

    /// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
    pub async fn thumbnail(
        &self,
        _user: &AuthedUser,
        server_name: &ServerName,
        media_id: &str,
        request: ThumbnailRequest,
    ) -> Result<Served, Error> {
        if request.width == 0 || request.height == 0 {
            return Err(Error::Unknown("thumbnails have a width and a height of at least 1".into()));
        }
        let content = self.content_of(server_name, media_id, request.timeout).await?;
        self.check_delivery(media_id, &content).await?;
        if content.size_bytes > MAX_THUMBNAIL_SOURCE_BYTES {
            return Err(Error::TooLarge("Content is too large to thumbnail".into()));
        }
        let key = thumbnail::choose_box(request.width, request.height, request.method, &self.config.thumbnail_sizes)
            .ok_or_else(|| Error::Unknown(format!("this server makes no {} thumbnails", request.method.as_str())))?;
        let animation_wanted = request.animated == Some(true);
        let cached = self.store.thumbnail(media_id, key).await?;
        if let Some(thumb) = &cached
            && !animation_wanted
        {
            return self.serve_stored(thumb).await;
        }
        let path = self.files.path_of(&content.sha256).ok_or_else(|| Error::Internal("a media row has no file name".into()))?;
        let probe_path = path.clone();
        let source = tokio::task::spawn_blocking(move || thumbnail::probe(&probe_path, (key.width, key.height)))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(thumbnail_error)?;
        let plan = thumbnail::plan(source, key, animation_wanted);
        if plan == Plan::Original {
            let file = self.open(&content.sha256).await?;
            return Ok(self.served_thumbnail(file, content.size_bytes, thumbnail::content_type(source.format)));
        }
        if let Some(thumb) = &cached {
            return self.serve_stored(thumb).await;
        }
        let job = self.thumbnails.job(self, media_id, source, path)?;
        let made = match tokio::time::timeout(Duration::from_millis(THUMBNAIL_WAIT_MS), job).await {
            Ok(result) => result.map_err(JobError::into_error)?,
            Err(_) => {
                return Err(Error::Unavailable {
                    message: "the thumbnail is still being made; try again shortly".into(),
                    retry_after_ms: 2_000,
                });
            }
        };
        let stored = made.iter().find(|t| t.key == key).ok_or_else(|| Error::Internal("a thumbnail job skipped a box".into()))?;
        self.serve_stored(stored).await
    }

    async fn serve_stored(&self, thumb: &StoredThumbnail) -> Result<Served, Error> {
        let file = self.open(&thumb.sha256).await?;
        Ok(self.served_thumbnail(file, thumb.size_bytes, &thumb.content_type))
    }

    /// `GET /_matrix/client/v1/media/preview_url`: `M_UNRECOGNIZED` is the
    /// API's answer when previews are off; here they are on.
    pub async fn preview_url(&self, user: &AuthedUser, url: &str) -> Result<JsonValue, Error> {
        let preview = self.preview.as_ref().ok_or_else(|| Error::NotFound("URL previews are off".into()))?;
        let now = self.clock.now_ms();
        if let Some(answer) = preview.cached(url, now) {
            return Ok(JsonValue::Object((*answer).clone()));
        }
        let page = preview.preview(url).await?;
        let mut og = page.properties;
        if let Some(image) = page.image {
            // The page's image, stored as media of the server's own (no
            // user's quota), and named by its mxc URI.
            match self.store_preview_image(user, image).await {
                Ok((uri, size)) => {
                    og.insert("og:image".into(), json!(uri));
                    og.insert("matrix:image:size".into(), json!(size));
                }
                Err(e) => tracing::debug!(error = %e, "a preview's image was not kept"),
            }
        }
        preview.remember(url, og.clone(), now);
        Ok(JsonValue::Object(og))
    }

    async fn store_preview_image(&self, _user: &AuthedUser, image: preview::FetchedImage) -> Result<(String, u64), Error> {
        let received = self.files.receive_bytes(image.bytes, &*self.entropy).await.map_err(disk_error)?;
        let size = received.size_bytes;
        let media_id = random_string(&*self.entropy, ALNUM, MEDIA_ID_LEN);
        let meta = UploadMeta { content_type: Some(image.content_type), file_name: None, declared_bytes: None };
        let media = self.new_media(media_id.clone(), None, meta, &received);
        self.commit(received, || self.store.store_media(media, u64::MAX)).await?;
        Ok((self.mxc(&media_id), size))
    }

    /// Deletes a local media item with its thumbnails and, once nothing
    /// else uses them, their files. False if there is no such item.
    pub async fn delete(&self, media_id: &str) -> Result<bool, Error> {
        if !is_valid_media_id(media_id) {
            return Ok(false);
        }
        let Some(deleted) = self.store.delete_media(media_id).await? else { return Ok(false) };
        for sha256 in deleted.unreferenced {
            // Looked at again under the lock: the same bytes may have been
            // uploaded since.
            let _lock = self.files.lock(&sha256).await;
            self.remove_if_unreferenced_locked(&sha256).await;
        }
        self.waiters.wake(media_id);
        Ok(true)
    }

    /// Quarantines (or releases) one local item: it answers 404 to
    /// everyone, its uploader included. False if there is no such item.
    pub async fn set_quarantined(&self, media_id: &str, quarantined: bool) -> Result<bool, Error> {
        if !is_valid_media_id(media_id) {
            return Ok(false);
        }
        Ok(self.store.set_media_quarantined(media_id, quarantined).await?)
    }

    /// Quarantines (or releases) every item a user uploaded; how many.
    pub async fn set_user_quarantined(&self, user_id: &str, quarantined: bool) -> Result<u64, Error> {
        Ok(self.store.set_user_media_quarantined(user_id, quarantined).await?)
    }

    fn ensure_local(&self, server_name: &ServerName) -> Result<(), Error> {
        if server_name == self.config.server_name {
            Ok(())
        } else {
            Err(Error::InvalidParam("Can only delete or quarantine local media".into()))
        }
    }

    /// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`, as Synapse
    /// answers it.
    pub async fn admin_delete(&self, admin: &AuthedUser, server_name: &ServerName, media_id: &str) -> Result<JsonValue, Error> {
        admin.ensure_admin()?;
        self.ensure_local(server_name)?;
        if !self.delete(media_id).await? {
            return Err(Error::NotFound("Unknown media".into()));
        }
        tracing::info!(admin = %admin.user_id, "media deleted by an admin");
        Ok(json!({ "deleted_media": [media_id], "total": 1 }))
    }

    /// `POST /_synapse/admin/v1/media/{un,}quarantine/{serverName}/{mediaId}`:
    /// `{}` as Synapse answers, whether or not the item exists.
    pub async fn admin_quarantine(
        &self,
        admin: &AuthedUser,
        server_name: &ServerName,
        media_id: &str,
        quarantined: bool,
    ) -> Result<JsonValue, Error> {
        admin.ensure_admin()?;
        self.ensure_local(server_name)?;
        if self.set_quarantined(media_id, quarantined).await? {
            tracing::info!(admin = %admin.user_id, quarantined, "media quarantine changed by an admin");
        }
        Ok(json!({}))
    }

    /// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`.
    pub async fn admin_quarantine_user(&self, admin: &AuthedUser, user_id: &str) -> Result<JsonValue, Error> {
        admin.ensure_admin()?;
        let count = self.set_user_quarantined(user_id, true).await?;
        tracing::info!(admin = %admin.user_id, count, "a user's media quarantined by an admin");
        Ok(json!({ "num_quarantined": count }))
    }

    /// Forgets expired pending ids and removes abandoned temporary files
    /// and files no row references (after a grace period: see
    /// [`files::ORPHAN_GRACE`]); a crash's leftovers go here. Bounded per
    /// pass; idempotent, so nodes may overlap.
    pub async fn collect_garbage(&self) -> Result<GarbageReport, Error> {
        let expired_pending = self.store.delete_expired_pending_media(self.clock.now_ms()).await?;
        let (temporary_files, candidates) = self.files.sweep(GARBAGE_FILES_PER_PASS).await.map_err(disk_error)?;
        let mut orphan_files = 0;
        for batch in candidates.chunks(GARBAGE_BATCH) {
            for sha256 in self.store.unreferenced_media_hashes(batch).await? {
                let _lock = self.files.lock(&sha256).await;
                if self.remove_if_unreferenced_locked(&sha256).await {
                    orphan_files += 1;
                }
            }
        }
        Ok(GarbageReport { expired_pending, temporary_files, orphan_files })
    }
}

/// Downloads waiting for pending content, by media id, on this node.
#[derive(Default)]
struct Waiters {
    map: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

struct WaitGuard<'a> {
    waiters: &'a Waiters,
    media_id: String,
    notify: Arc<Notify>,
}

impl WaitGuard<'_> {
    fn notify(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }
}

impl Waiters {
    /// `None` past [`MAX_MEDIA_DOWNLOAD_WAITERS`].
    fn register(&self, media_id: &str) -> Option<WaitGuard<'_>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = map.values().map(|(_, n)| n).sum();
        if total >= MAX_MEDIA_DOWNLOAD_WAITERS {
            return None;
        }
        let entry = map.entry(media_id.to_owned()).or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Some(WaitGuard { waiters: self, media_id: media_id.to_owned(), notify: Arc::clone(&entry.0) })
    }

    fn wake(&self, media_id: &str) {
        if let Some((notify, _)) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(media_id) {
            notify.notify_waiters();
        }
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.media_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.media_id);
            }
        }
    }
}

/// Why a thumbnail job failed, shared by everyone waiting for it.
#[derive(Debug, Clone)]
enum JobError {
    Thumbnail(ThumbnailError),
    Failed(String),
    Gone,
}

impl JobError {
    fn into_error(self) -> Error {
        match self {
            JobError::Thumbnail(e) => thumbnail_error(e),
            JobError::Failed(e) => Error::Internal(e),
            JobError::Gone => Error::NotFound("Not found".into()),
        }
    }
}

type Made = Arc<Vec<StoredThumbnail>>;
type Job = Shared<BoxFuture<'static, Result<Made, JobError>>>;

/// Thumbnails being made: one job per item makes every box the item is
/// cut into from one decoding (decoding is most of the cost; Synapse makes
/// them all at upload), however many ask at once; at most `permits` jobs
/// decode at a time and at most [`MAX_QUEUED_THUMBNAILS`] wait. A job runs
/// to its end (and its thumbnails are stored) even when everyone who asked
/// gave up waiting.
struct Thumbnailer {
    permits: Arc<Semaphore>,
    jobs: Arc<Mutex<HashMap<String, Job>>>,
}

impl Thumbnailer {
    fn job(&self, media: &Media, media_id: &str, source: thumbnail::Source, path: std::path::PathBuf) -> Result<Job, Error> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.get(media_id) {
            return Ok(job.clone());
        }
        if jobs.len() >= MAX_QUEUED_THUMBNAILS {
            return Err(Error::LimitExceeded { retry_after_ms: 1_000 });
        }
        // Every box that is a still of this source (the others are answered
        // with the original).
        let boxes: Vec<(ThumbnailKey, Plan)> = media
            .config
            .thumbnail_sizes
            .iter()
            .map(|key| (*key, thumbnail::plan(source, *key, false)))
            .filter(|(_, plan)| *plan != Plan::Original)
            .collect();
        let (permits, jobs_map) = (Arc::clone(&self.permits), Arc::clone(&self.jobs));
        let (files, store, entropy) = (Arc::clone(&media.files), Arc::clone(&media.store), Arc::clone(&media.entropy));
        let media_id = media_id.to_owned();
        let task_key = media_id.clone();
        let task = tokio::spawn(async move {
            let result = make_thumbnails(permits, files, store, entropy, &media_id, boxes, path).await;
            jobs_map.lock().unwrap_or_else(|p| p.into_inner()).remove(&media_id);
            result
        });
        let job =
            async move { task.await.unwrap_or_else(|e| Err(JobError::Failed(format!("thumbnail task: {e}")))) }.boxed().shared();
        jobs.insert(task_key, job.clone());
        Ok(job)
    }
}

async fn make_thumbnails(
    permits: Arc<Semaphore>,
    files: Arc<FileStore>,
    store: Arc<dyn MediaStore>,
    entropy: Arc<dyn Entropy>,
    media_id: &str,
    boxes: Vec<(ThumbnailKey, Plan)>,
    path: std::path::PathBuf,
) -> Result<Made, JobError> {
    let _permit = permits.acquire_owned().await.map_err(|e| JobError::Failed(e.to_string()))?;
    let plans: Vec<Plan> = boxes.iter().map(|(_, plan)| *plan).collect();
    let rendered = tokio::task::spawn_blocking(move || thumbnail::render_all(&path, &plans))
        .await
        .map_err(|e| JobError::Failed(format!("thumbnail task: {e}")))?
        .map_err(JobError::Thumbnail)?;
    let mut made = Vec::with_capacity(boxes.len());
    for ((key, _), (bytes, format)) in boxes.into_iter().zip(rendered) {
        let mut received = files.receive_bytes(bytes, &*entropy).await.map_err(|e| JobError::Failed(e.to_string()))?;
        let sha256 = received.sha256.clone();
        let thumb = StoredThumbnail {
            key,
            content_type: thumbnail::content_type(format).to_owned(),
            size_bytes: received.size_bytes,
            sha256: sha256.clone(),
        };
        let _lock = files.lock(&sha256).await;
        let placed = files.place(&mut received).await.map_err(|e| JobError::Failed(e.to_string()))?;
        let stored = store.store_thumbnail(media_id, thumb).await;
        if placed && stored.as_ref().map_or(true, |s| s.sha256 != sha256) {
            // Another node's thumbnail won, or the item is gone: ours is garbage.
            if let Ok(free) = store.unreferenced_media_hashes(std::slice::from_ref(&sha256)).await
                && !free.is_empty()
            {
                let _ = files.remove(&sha256).await;
            }
        }
        match stored {
            Ok(stored) => made.push(stored),
            Err(chancery_store::StoreError::UnknownMedia) => return Err(JobError::Gone),
            Err(e) => return Err(JobError::Failed(e.to_string())),
        }
    }
    Ok(Arc::new(made))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_restricted_to_the_spec_alphabet() {
        for ok in ["abcXYZ019", "a_b-c", &"a".repeat(MAX_MEDIA_ID_BYTES)] {
            assert!(is_valid_media_id(ok), "{ok}");
        }
        for bad in ["", "../etc", "a/b", "a.b", "a%2Fb", "ä", &"a".repeat(MAX_MEDIA_ID_BYTES + 1)] {
            assert!(!is_valid_media_id(bad), "{bad}");
        }
    }

    #[test]
    fn waiters_are_bounded_and_cleaned_up() {
        let waiters = Waiters::default();
        let a = waiters.register("m1").unwrap();
        let b = waiters.register("m1").unwrap();
        assert!(Arc::ptr_eq(&a.notify(), &b.notify()));
        drop(a);
        assert_eq!(waiters.map.lock().unwrap().get("m1").map(|e| e.1), Some(1));
        drop(b);
        assert!(waiters.map.lock().unwrap().is_empty());
        let many: Vec<_> = (0..MAX_MEDIA_DOWNLOAD_WAITERS).map(|n| waiters.register(&format!("m{}", n % 7)).unwrap()).collect();
        assert!(waiters.register("other").is_none());
        drop(many);
        assert!(waiters.map.lock().unwrap().is_empty());
    }
}
