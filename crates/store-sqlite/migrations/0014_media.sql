-- The content repository (store `MediaStore`): media ids with their
-- content's metadata, thumbnails, and each uploader's usage. Files live
-- under the media directory, named by the SHA-256 of their bytes; a row is
-- written only once its file is complete on disk.

-- One row per local media id. `sha256` is NULL while an id created by
-- `POST /_matrix/media/v1/create` waits for its content (until
-- `unused_expires_ts`); `uploader` is NULL for media the server made.
CREATE TABLE media (
    media_id          TEXT PRIMARY KEY NOT NULL,
    uploader          TEXT,
    created_ts        INTEGER NOT NULL,
    unused_expires_ts INTEGER,
    content_type      TEXT,
    file_name         TEXT,
    size_bytes        INTEGER,
    sha256            TEXT,
    uploaded_ts       INTEGER,
    quarantined       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE INDEX media_by_uploader ON media (uploader);
CREATE INDEX media_by_sha256 ON media (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX media_pending_by_expiry ON media (unused_expires_ts) WHERE sha256 IS NULL;

-- Thumbnails by the box they were made for; their files are named like
-- originals' (two items' identical thumbnails share one file).
CREATE TABLE media_thumbnails (
    media_id     TEXT NOT NULL REFERENCES media (media_id) ON DELETE CASCADE,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    method       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
) WITHOUT ROWID;

CREATE INDEX media_thumbnails_by_sha256 ON media_thumbnails (sha256);

-- Bytes each user's uploads take, kept with every upload and deletion so
-- the quota check reads one row.
CREATE TABLE media_usage (
    user_id TEXT PRIMARY KEY NOT NULL,
    bytes   INTEGER NOT NULL
) WITHOUT ROWID;
