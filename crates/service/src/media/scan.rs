//! The point where a content scanner (issue 17: ClamAV before delivery)
//! decides whether an item may be served. [`Media`](super::Media) asks its
//! [`DeliveryCheck`], when it has one, before every download and thumbnail
//! of an item, with the item's file; a refusal is answered 403
//! `M_FORBIDDEN` with its reason, an error of the check as that error.
//! A check may keep its verdicts by `sha256` (files are content-addressed,
//! so a verdict holds for every item of the same bytes).

use std::path::Path;

use async_trait::async_trait;

use crate::Error;

/// What a check is shown of an item about to be served.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySubject<'a> {
    pub media_id: &'a str,
    /// The SHA-256 of the bytes (lower-case hex).
    pub sha256: &'a str,
    /// As the uploader declared it.
    pub content_type: Option<&'a str>,
    pub size_bytes: u64,
    /// The item's file, whole (read it, never change it).
    pub path: &'a Path,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryVerdict {
    Deliver,
    /// Not served; `reason` is shown to the client.
    Refuse {
        reason: String,
    },
}

/// Decides, before delivery, whether an item may be served.
#[async_trait]
pub trait DeliveryCheck: Send + Sync {
    async fn check(&self, subject: &DeliverySubject<'_>) -> Result<DeliveryVerdict, Error>;
}
