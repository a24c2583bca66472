//! `MediaStore` on PostgreSQL. A user's pending ids and usage are counted
//! under an advisory lock per user, so concurrent uploads on several nodes
//! cannot all pass the bound; completing a pending id locks its row, so it
//! gets content once.

use async_trait::async_trait;
use chancery_store::{
    DeletedMedia, MediaRecord, MediaStore, NewMedia, PendingMedia, StoreError, StoreResult, StoredThumbnail, ThumbnailKey,
};
use chancery_store_sql::params::reaches_limit;
use chancery_store_sql::rows::{self, MEDIA_SELECT, THUMBNAIL_COLUMNS};
use chancery_store_sql::{i, u};
use deadpool_postgres::GenericClient;

use crate::query::{PgRow, execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// Serialises one user's media writes across nodes until commit.
async fn lock_user(tx: &impl GenericClient, user: &str) -> StoreResult<()> {
    execute(tx, "SELECT pg_advisory_xact_lock(hashtext('media:' || $1))", &[&user]).await.map_err(backend)?;
    Ok(())
}

/// Adds `size` to the uploader's usage (under [`lock_user`]), or
/// `MediaQuotaExceeded` if that passes `max`.
async fn add_usage(tx: &impl GenericClient, uploader: &str, size: u64, max: u64) -> StoreResult<()> {
    let used = query_opt(tx, "SELECT bytes FROM media_usage WHERE user_id = $1", &[&uploader]).await?;
    let used = match used {
        Some(row) => u(get(&row, 0)?),
        None => 0,
    };
    if used.saturating_add(size) > max {
        return Err(StoreError::MediaQuotaExceeded);
    }
    execute(
        tx,
        "INSERT INTO media_usage (user_id, bytes) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET bytes = media_usage.bytes + EXCLUDED.bytes",
        &[&uploader, &i(size)],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Of `hashes`, those no item or thumbnail references.
async fn unreferenced(c: &impl GenericClient, hashes: &[String]) -> StoreResult<Vec<String>> {
    let rows = query(
        c,
        "SELECT h FROM unnest($1::text[]) AS h
         WHERE NOT EXISTS (SELECT 1 FROM media WHERE sha256 = h)
           AND NOT EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = h)",
        &[&hashes],
    )
    .await?;
    rows.iter().map(|r| get::<String>(r, 0)).collect()
}

#[async_trait]
impl MediaStore for PostgresStore {
    async fn create_pending_media(&self, pending: PendingMedia, now_ts: u64, max_pending: usize) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock_user(&tx, &pending.uploader).await?;
        execute(
            &tx,
            "DELETE FROM media WHERE uploader = $1 AND sha256 IS NULL AND unused_expires_ts <= $2",
            &[&pending.uploader, &i(now_ts)],
        )
        .await
        .map_err(backend)?;
        let live = query_opt(&tx, "SELECT COUNT(*) FROM media WHERE uploader = $1 AND sha256 IS NULL", &[&pending.uploader])
            .await?
            .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
        if reaches_limit(get(&live, 0)?, max_pending) {
            return Err(StoreError::TooManyPendingMedia);
        }
        let inserted = execute(
            &tx,
            "INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (media_id) DO NOTHING",
            &[&pending.media_id, &pending.uploader, &i(pending.created_ts), &i(pending.expires_ts)],
        )
        .await
        .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::MediaIdTaken);
        }
        tx.commit().await.map_err(backend)
    }

    async fn store_media(&self, media: NewMedia, max_bytes_per_user: u64) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        if let Some(uploader) = &media.uploader {
            lock_user(&tx, uploader).await?;
            add_usage(&tx, uploader, media.size_bytes, max_bytes_per_user).await?;
        }
        let inserted = execute(
            &tx,
            "INSERT INTO media (media_id, uploader, created_ts, content_type, file_name, size_bytes, sha256, uploaded_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $3)
             ON CONFLICT (media_id) DO NOTHING",
            &[
                &media.media_id,
                &media.uploader,
                &i(media.uploaded_ts),
                &media.content_type,
                &media.file_name,
                &i(media.size_bytes),
                &media.sha256,
            ],
        )
        .await
        .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::MediaIdTaken);
        }
        tx.commit().await.map_err(backend)
    }

    async fn complete_pending_media(&self, media: NewMedia, now_ts: u64, max_bytes_per_user: u64) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        if let Some(uploader) = &media.uploader {
            lock_user(&tx, uploader).await?;
        }
        let row = query_opt(
            &tx,
            "SELECT uploader, sha256, unused_expires_ts FROM media WHERE media_id = $1 FOR UPDATE",
            &[&media.media_id],
        )
        .await?;
        let Some(row) = row else { return Err(StoreError::UnknownMedia) };
        let (creator, sha256, expires): (Option<String>, Option<String>, Option<i64>) =
            (get(&row, 0)?, get(&row, 1)?, get(&row, 2)?);
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
            add_usage(&tx, uploader, media.size_bytes, max_bytes_per_user).await?;
        }
        execute(
            &tx,
            "UPDATE media SET content_type = $2, file_name = $3, size_bytes = $4, sha256 = $5, uploaded_ts = $6,
                    unused_expires_ts = NULL
             WHERE media_id = $1",
            &[&media.media_id, &media.content_type, &media.file_name, &i(media.size_bytes), &media.sha256, &i(media.uploaded_ts)],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn media(&self, media_id: &str) -> StoreResult<Option<MediaRecord>> {
        let client = self.client().await?;
        let sql = format!("{MEDIA_SELECT} WHERE media_id = $1");
        query_opt(&client, &sql, &[&media_id]).await?.as_ref().map(|r| rows::media_record(&PgRow(r))).transpose()
    }

    async fn thumbnail(&self, media_id: &str, key: ThumbnailKey) -> StoreResult<Option<StoredThumbnail>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {THUMBNAIL_COLUMNS} FROM media_thumbnails WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4"
        );
        let (width, height) = (dimension(key.width), dimension(key.height));
        let row = query_opt(&client, &sql, &[&media_id, &width, &height, &key.method.as_str()]).await?;
        row.as_ref().map(|r| rows::stored_thumbnail(&PgRow(r), key)).transpose()
    }

    async fn store_thumbnail(&self, media_id: &str, thumbnail: StoredThumbnail) -> StoreResult<StoredThumbnail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // A share lock: a deletion of the item waits for this to commit, and
        // this sees a deletion that committed first.
        let uploaded = query_opt(&tx, "SELECT sha256 IS NOT NULL FROM media WHERE media_id = $1 FOR SHARE", &[&media_id]).await?;
        if !matches!(uploaded.as_ref().map(|r| get::<bool>(r, 0)).transpose()?, Some(true)) {
            return Err(StoreError::UnknownMedia);
        }
        let key = thumbnail.key;
        let (width, height) = (dimension(key.width), dimension(key.height));
        execute(
            &tx,
            "INSERT INTO media_thumbnails (media_id, width, height, method, content_type, size_bytes, sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (media_id, width, height, method) DO NOTHING",
            &[
                &media_id,
                &width,
                &height,
                &key.method.as_str(),
                &thumbnail.content_type,
                &i(thumbnail.size_bytes),
                &thumbnail.sha256,
            ],
        )
        .await
        .map_err(backend)?;
        let sql = format!(
            "SELECT {THUMBNAIL_COLUMNS} FROM media_thumbnails WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4"
        );
        let row = query_opt(&tx, &sql, &[&media_id, &width, &height, &key.method.as_str()])
            .await?
            .ok_or_else(|| StoreError::Backend("the thumbnail just stored is missing".into()))?;
        let stored = rows::stored_thumbnail(&PgRow(&row), key)?;
        tx.commit().await.map_err(backend)?;
        Ok(stored)
    }

    async fn delete_media(&self, media_id: &str) -> StoreResult<Option<DeletedMedia>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let row =
            query_opt(&tx, "SELECT uploader, size_bytes, sha256 FROM media WHERE media_id = $1 FOR UPDATE", &[&media_id]).await?;
        let Some(row) = row else { return Ok(None) };
        let (uploader, size, sha256): (Option<String>, Option<i64>, Option<String>) =
            (get(&row, 0)?, get(&row, 1)?, get(&row, 2)?);
        let thumbs = query(&tx, "SELECT DISTINCT sha256 FROM media_thumbnails WHERE media_id = $1", &[&media_id]).await?;
        let mut hashes = thumbs.iter().map(|r| get::<String>(r, 0)).collect::<StoreResult<Vec<_>>>()?;
        hashes.extend(sha256.clone());
        hashes.sort();
        hashes.dedup();
        execute(&tx, "DELETE FROM media WHERE media_id = $1", &[&media_id]).await.map_err(backend)?;
        if let (Some(uploader), Some(size), Some(_)) = (&uploader, size, &sha256) {
            lock_user(&tx, uploader).await?;
            execute(&tx, "UPDATE media_usage SET bytes = GREATEST(0, bytes - $2) WHERE user_id = $1", &[uploader, &size])
                .await
                .map_err(backend)?;
        }
        let unreferenced = unreferenced(&tx, &hashes).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(DeletedMedia { unreferenced }))
    }

    async fn set_media_quarantined(&self, media_id: &str, quarantined: bool) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = execute(&client, "UPDATE media SET quarantined = $2 WHERE media_id = $1", &[&media_id, &quarantined])
            .await
            .map_err(backend)?;
        Ok(changed > 0)
    }

    async fn set_user_media_quarantined(&self, user_id: &str, quarantined: bool) -> StoreResult<u64> {
        let client = self.client().await?;
        execute(&client, "UPDATE media SET quarantined = $2 WHERE uploader = $1", &[&user_id, &quarantined])
            .await
            .map_err(backend)
    }

    async fn unreferenced_media_hashes(&self, hashes: &[String]) -> StoreResult<Vec<String>> {
        let (_heavy, client) = self.heavy_client().await?;
        unreferenced(&client, hashes).await
    }

    async fn delete_expired_pending_media(&self, now_ts: u64) -> StoreResult<u64> {
        let client = self.client().await?;
        execute(&client, "DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts <= $1", &[&i(now_ts)])
            .await
            .map_err(backend)
    }

    async fn media_usage_bytes(&self, user_id: &str) -> StoreResult<u64> {
        let client = self.client().await?;
        let row = query_opt(&client, "SELECT bytes FROM media_usage WHERE user_id = $1", &[&user_id]).await?;
        Ok(match row {
            Some(row) => u(get(&row, 0)?),
            None => 0,
        })
    }
}

/// A thumbnail dimension as its INTEGER column (dimensions are bounded far
/// below `i32::MAX` by the service).
fn dimension(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
