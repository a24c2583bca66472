-- The content repository (store `MediaStore`, `media.rs`): the same
-- tables as SQLite's 0014_media.sql. Media ids with their content's
-- metadata, thumbnails, and each uploader's usage. Files live under the
-- media directory, named by the SHA-256 of their bytes; a row is written
-- only once its file is complete on disk.

CREATE TABLE media (
    media_id          TEXT COLLATE "C" PRIMARY KEY,
    uploader          TEXT COLLATE "C",
    created_ts        BIGINT NOT NULL,
    unused_expires_ts BIGINT,
    content_type      TEXT,
    file_name         TEXT,
    size_bytes        BIGINT,
    sha256            TEXT COLLATE "C",
    uploaded_ts       BIGINT,
    quarantined       BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX media_by_uploader ON media (uploader);
CREATE INDEX media_by_sha256 ON media (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX media_pending_by_expiry ON media (unused_expires_ts) WHERE sha256 IS NULL;

CREATE TABLE media_thumbnails (
    media_id     TEXT COLLATE "C" NOT NULL REFERENCES media (media_id) ON DELETE CASCADE,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    method       TEXT COLLATE "C" NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    sha256       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);

CREATE INDEX media_thumbnails_by_sha256 ON media_thumbnails (sha256);

CREATE TABLE media_usage (
    user_id TEXT COLLATE "C" PRIMARY KEY,
    bytes   BIGINT NOT NULL
);
