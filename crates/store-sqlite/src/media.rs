//! `MediaStore` on SQLite. Every write runs on the single writer, so a
//! count or a usage read and the write after it cannot be overtaken.

use async_trait::async_trait;
use chancery_store::{
    DeletedMedia, MediaRecord, MediaStore, NewMedia, PendingMedia, StoreError, StoreResult, StoredThumbnail, ThumbnailKey,
};
use chancery_store_sql::params::reaches_limit;
use chancery_store_sql::rows::{self, MEDIA_SELECT, THUMBNAIL_COLUMNS};
use chancery_store_sql::{i, u};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// Adds `size` to the uploader's usage, or `MediaQuotaExceeded` if that
/// passes `max`.
fn add_usage(tx: &Transaction<'_>, uploader: &str, size: u64, max: u64) -> StoreResult<()> {
    let used: i64 = tx
        .prepare_cached("SELECT bytes FROM media_usage WHERE user_id = ?1")
        .and_then(|mut s| s.query_row([uploader], |r| r.get(0)).optional())
        .map_err(backend)?
        .unwrap_or(0);
    if u(used).saturating_add(size) > max {
        return Err(StoreError::MediaQuotaExceeded);
    }
    tx.prepare_cached(
        "INSERT INTO media_usage (user_id, bytes) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET bytes = bytes + excluded.bytes",
    )
    .and_then(|mut s| s.execute(params![uploader, i(size)]))
    .map_err(backend)?;
    Ok(())
}

fn is_referenced(tx: &rusqlite::Connection, sha256: &str) -> StoreResult<bool> {
    tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM media WHERE sha256 = ?1)
             OR EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = ?1)",
    )
    .and_then(|mut s| s.query_row([sha256], |r| r.get(0)))
    .map_err(backend)
}

#[async_trait]
impl MediaStore for SqliteStore {
    async fn create_pending_media(&self, pending: PendingMedia, now_ts: u64, max_pending: usize) -> StoreResult<()> {
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM media WHERE uploader = ?1 AND sha256 IS NULL AND unused_expires_ts <= ?2")
                .and_then(|mut s| s.execute(params![pending.uploader, i(now_ts)]))
                .map_err(backend)?;
            let live: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM media WHERE uploader = ?1 AND sha256 IS NULL")
                .and_then(|mut s| s.query_row([&pending.uploader], |r| r.get(0)))
                .map_err(backend)?;
            if reaches_limit(live, max_pending) {
                return Err(StoreError::TooManyPendingMedia);
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (media_id) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![pending.media_id, pending.uploader, i(pending.created_ts), i(pending.expires_ts)])
                })
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::MediaIdTaken);
            }
            Ok(())
        })
        .await
    }

    async fn store_media(&self, media: NewMedia, max_bytes_per_user: u64) -> StoreResult<()> {
        self.write(move |tx| {
            if let Some(uploader) = &media.uploader {
                add_usage(tx, uploader, media.size_bytes, max_bytes_per_user)?;
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO media (media_id, uploader, created_ts, content_type, file_name, size_bytes, sha256, uploaded_ts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?3)
                     ON CONFLICT (media_id) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        media.media_id,
                        media.uploader,
                        i(media.uploaded_ts),
                        media.content_type,
                        media.file_name,
                        i(media.size_bytes),
                        media.sha256,
                    ])
                })
                .map_err(backend)?;
            if inserted == 0 {
                // The usage added above goes with the rolled-back transaction.
                return Err(StoreError::MediaIdTaken);
            }
            Ok(())
        })
        .await
    }

    async fn complete_pending_media(&self, media: NewMedia, now_ts: u64, max_bytes_per_user: u64) -> StoreResult<()> {
        self.write(move |tx| {
            let row: Option<(Option<String>, Option<String>, Option<i64>)> = tx
                .prepare_cached("SELECT uploader, sha256, unused_expires_ts FROM media WHERE media_id = ?1")
                .and_then(|mut s| s.query_row([&media.media_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
                .map_err(backend)?;
            let Some((creator, sha256, expires)) = row else { return Err(StoreError::UnknownMedia) };
            if sha256.is_none() && expires.is_some_and(|t| u(t) <= now_ts) {
                return Err(StoreError::UnknownMedia);
            }
            if creator != media.uploader {
                return Err(StoreError::NotMediaCreator);
            }
            if sha256.is_some() {
                return Err(StoreError::MediaAlreadyUploaded);
            }
            if let Some(uploader) = &media.uploader {
                add_usage(tx, uploader, media.size_bytes, max_bytes_per_user)?;
            }
            tx.prepare_cached(
                "UPDATE media SET content_type = ?2, file_name = ?3, size_bytes = ?4, sha256 = ?5, uploaded_ts = ?6,
                        unused_expires_ts = NULL
                 WHERE media_id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    media.media_id,
                    media.content_type,
                    media.file_name,
                    i(media.size_bytes),
                    media.sha256,
                    i(media.uploaded_ts),
                ])
            })
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn media(&self, media_id: &str) -> StoreResult<Option<MediaRecord>> {
        self.read(|conn| {
            let sql = format!("{MEDIA_SELECT} WHERE media_id = ?1");
            conn.prepare_cached(&sql)
                .and_then(|mut s| s.query_row([media_id], |r| rows::media_record(&SqliteRow(r))).optional())
                .map_err(backend)
        })
        .await
    }

    async fn thumbnail(&self, media_id: &str, key: ThumbnailKey) -> StoreResult<Option<StoredThumbnail>> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {THUMBNAIL_COLUMNS} FROM media_thumbnails WHERE media_id = ?1 AND width = ?2 AND height = ?3 AND method = ?4"
            );
            conn.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_row(params![media_id, key.width, key.height, key.method.as_str()], |r| {
                        rows::stored_thumbnail(&SqliteRow(r), key)
                    })
                    .optional()
                })
                .map_err(backend)
        })
        .await
    }

    async fn store_thumbnail(&self, media_id: &str, thumbnail: StoredThumbnail) -> StoreResult<StoredThumbnail> {
        let media_id = media_id.to_owned();
        self.write(move |tx| {
            let uploaded: Option<bool> = tx
                .prepare_cached("SELECT sha256 IS NOT NULL FROM media WHERE media_id = ?1")
                .and_then(|mut s| s.query_row([&media_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            if uploaded != Some(true) {
                return Err(StoreError::UnknownMedia);
            }
            let key = thumbnail.key;
            tx.prepare_cached(
                "INSERT INTO media_thumbnails (media_id, width, height, method, content_type, size_bytes, sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (media_id, width, height, method) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    media_id,
                    key.width,
                    key.height,
                    key.method.as_str(),
                    thumbnail.content_type,
                    i(thumbnail.size_bytes),
                    thumbnail.sha256,
                ])
            })
            .map_err(backend)?;
            let sql = format!(
                "SELECT {THUMBNAIL_COLUMNS} FROM media_thumbnails WHERE media_id = ?1 AND width = ?2 AND height = ?3 AND method = ?4"
            );
            tx.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_row(params![media_id, key.width, key.height, key.method.as_str()], |r| {
                        rows::stored_thumbnail(&SqliteRow(r), key)
                    })
                })
                .map_err(backend)
        })
        .await
    }

    async fn delete_media(&self, media_id: &str) -> StoreResult<Option<DeletedMedia>> {
        let media_id = media_id.to_owned();
        self.write(move |tx| {
            let row: Option<(Option<String>, Option<i64>, Option<String>)> = tx
                .prepare_cached("SELECT uploader, size_bytes, sha256 FROM media WHERE media_id = ?1")
                .and_then(|mut s| s.query_row([&media_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
                .map_err(backend)?;
            let Some((uploader, size, sha256)) = row else { return Ok(None) };
            let mut hashes: Vec<String> = {
                let mut stmt =
                    tx.prepare_cached("SELECT DISTINCT sha256 FROM media_thumbnails WHERE media_id = ?1").map_err(backend)?;
                let rows = stmt.query_map([&media_id], |r| r.get(0)).map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)?
            };
            hashes.extend(sha256.clone());
            hashes.sort();
            hashes.dedup();
            tx.prepare_cached("DELETE FROM media WHERE media_id = ?1")
                .and_then(|mut s| s.execute([&media_id]))
                .map_err(backend)?;
            if let (Some(uploader), Some(size), Some(_)) = (&uploader, size, &sha256) {
                tx.prepare_cached("UPDATE media_usage SET bytes = MAX(0, bytes - ?2) WHERE user_id = ?1")
                    .and_then(|mut s| s.execute(params![uploader, size]))
                    .map_err(backend)?;
            }
            let mut unreferenced = Vec::new();
            for hash in hashes {
                if !is_referenced(tx, &hash)? {
                    unreferenced.push(hash);
                }
            }
            Ok(Some(DeletedMedia { unreferenced }))
        })
        .await
    }

    async fn set_media_quarantined(&self, media_id: &str, quarantined: bool) -> StoreResult<bool> {
        let media_id = media_id.to_owned();
        self.write(move |tx| {
            let changed = tx
                .prepare_cached("UPDATE media SET quarantined = ?2 WHERE media_id = ?1")
                .and_then(|mut s| s.execute(params![media_id, quarantined]))
                .map_err(backend)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn set_user_media_quarantined(&self, user_id: &str, quarantined: bool) -> StoreResult<u64> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            let changed = tx
                .prepare_cached("UPDATE media SET quarantined = ?2 WHERE uploader = ?1")
                .and_then(|mut s| s.execute(params![user_id, quarantined]))
                .map_err(backend)?;
            Ok(changed as u64)
        })
        .await
    }

    async fn unreferenced_media_hashes(&self, hashes: &[String]) -> StoreResult<Vec<String>> {
        let hashes = hashes.to_vec();
        self.read_heavy(move |conn| {
            let mut unreferenced = Vec::new();
            for hash in hashes {
                if !is_referenced(conn, &hash)? {
                    unreferenced.push(hash);
                }
            }
            Ok(unreferenced)
        })
        .await
    }

    async fn delete_expired_pending_media(&self, now_ts: u64) -> StoreResult<u64> {
        self.write(move |tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts <= ?1")
                .and_then(|mut s| s.execute([i(now_ts)]))
                .map_err(backend)?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn media_usage_bytes(&self, user_id: &str) -> StoreResult<u64> {
        self.read(|conn| {
            let used: Option<i64> = conn
                .prepare_cached("SELECT bytes FROM media_usage WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([user_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            Ok(used.map_or(0, u))
        })
        .await
    }
}
