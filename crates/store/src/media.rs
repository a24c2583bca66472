//! The content repository's metadata (spec "Content repository"): which
//! media ids exist, who made them, what their content is (type, file name,
//! size and the SHA-256 of the bytes, which names the file on disk), their
//! thumbnails, whether an admin quarantined them, and each uploader's
//! usage. The bytes themselves are files the service keeps; a row is only
//! ever written once its file is complete on disk, so a row always has its
//! whole file (a file without a row is garbage the service collects).

use async_trait::async_trait;

use crate::StoreResult;

/// Uploaded content, as recorded once its file is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMedia {
    pub media_id: String,
    /// The uploading user; `None` for media the server made itself (the
    /// images of URL previews), which count against nobody's quota.
    pub uploader: Option<String>,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of the bytes: the file's name.
    pub sha256: String,
    pub uploaded_ts: u64,
}

/// A media id created ahead of its content (spec `POST /_matrix/media/v1/create`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMedia {
    pub media_id: String,
    pub uploader: String,
    pub created_ts: u64,
    /// Past this the id is forgotten if no content came.
    pub expires_ts: u64,
}

/// The content of an uploaded media item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaContent {
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    pub size_bytes: u64,
    pub sha256: String,
    pub uploaded_ts: u64,
}

/// A media id as stored: uploaded (`content`) or still pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    pub media_id: String,
    pub uploader: Option<String>,
    pub created_ts: u64,
    /// `None` while the id waits for its content.
    pub content: Option<MediaContent>,
    /// When a pending id expires (`None` once uploaded).
    pub unused_expires_ts: Option<u64>,
    /// Hidden from everyone by an admin.
    pub quarantined: bool,
}

/// How a thumbnail was cut (spec "Thumbnails").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThumbnailMethod {
    Scale,
    Crop,
}

impl ThumbnailMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ThumbnailMethod::Scale => "scale",
            ThumbnailMethod::Crop => "crop",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scale" => Some(ThumbnailMethod::Scale),
            "crop" => Some(ThumbnailMethod::Crop),
            _ => None,
        }
    }
}

/// Which thumbnail of a media item: the box it was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThumbnailKey {
    pub width: u32,
    pub height: u32,
    pub method: ThumbnailMethod,
}

/// A thumbnail as stored: its file is named by `sha256` like originals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredThumbnail {
    pub key: ThumbnailKey,
    pub content_type: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// What deleting a media item freed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeletedMedia {
    /// Hashes of the item's files (original and thumbnails) that no row
    /// references any more: their files may go.
    pub unreferenced: Vec<String>,
}

#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Reserves `pending.media_id` for its uploader, first forgetting that
    /// uploader's pending ids that expired at `now_ts`. `TooManyPendingMedia`
    /// if the uploader already holds `max_pending` live ones (checked and
    /// written in one transaction, so the bound holds under concurrency);
    /// `MediaIdTaken` if the id exists.
    async fn create_pending_media(&self, pending: PendingMedia, now_ts: u64, max_pending: usize) -> StoreResult<()>;

    /// Records content uploaded under a new id, adding its size to the
    /// uploader's usage. `MediaQuotaExceeded` if that usage would pass
    /// `max_bytes_per_user`; `MediaIdTaken` if the id exists.
    async fn store_media(&self, media: NewMedia, max_bytes_per_user: u64) -> StoreResult<()>;

    /// Records the content of a pending id (spec `PUT
    /// /_matrix/media/v3/upload/{serverName}/{mediaId}`), once: `UnknownMedia`
    /// if there is no such id or it expired at `now_ts`, `NotMediaCreator` if
    /// `media.uploader` did not create it, `MediaAlreadyUploaded` if it has
    /// content, `MediaQuotaExceeded` as [`Self::store_media`].
    async fn complete_pending_media(&self, media: NewMedia, now_ts: u64, max_bytes_per_user: u64) -> StoreResult<()>;

    async fn media(&self, media_id: &str) -> StoreResult<Option<MediaRecord>>;

    async fn thumbnail(&self, media_id: &str, key: ThumbnailKey) -> StoreResult<Option<StoredThumbnail>>;

    /// Records a thumbnail of an uploaded item and returns the one stored:
    /// an earlier one of the same key wins (then the caller's file is the
    /// garbage). `UnknownMedia` if the item is gone or has no content.
    async fn store_thumbnail(&self, media_id: &str, thumbnail: StoredThumbnail) -> StoreResult<StoredThumbnail>;

    /// Deletes a media item with its thumbnails, taking its size off its
    /// uploader's usage; `None` if there is no such item.
    async fn delete_media(&self, media_id: &str) -> StoreResult<Option<DeletedMedia>>;

    /// Quarantines or releases one item; false if there is no such item.
    async fn set_media_quarantined(&self, media_id: &str, quarantined: bool) -> StoreResult<bool>;

    /// Quarantines or releases every item a user uploaded; returns how
    /// many there are.
    async fn set_user_media_quarantined(&self, user_id: &str, quarantined: bool) -> StoreResult<u64>;

    /// Of `hashes`, those no media item or thumbnail references.
    async fn unreferenced_media_hashes(&self, hashes: &[String]) -> StoreResult<Vec<String>>;

    /// Forgets every pending id that expired at `now_ts`; returns how many.
    async fn delete_expired_pending_media(&self, now_ts: u64) -> StoreResult<u64>;

    /// Bytes the user's uploads take (what counts against the quota).
    async fn media_usage_bytes(&self, user_id: &str) -> StoreResult<u64>;
}
