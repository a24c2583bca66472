-- End-to-end encryption, the server's part (store `KeyStore`, `keys.rs`):
-- device, one-time, fallback and cross-signing keys, signatures added to
-- keys, the device-list and to-device streams, key backups and dehydrated
-- devices. The same tables as SQLite's 0013_e2ee.sql. Key objects are the
-- clients' JSON, canonicalised by the service, kept as TEXT (not JSONB,
-- which would reorder keys and break signatures).
--
-- Identifier columns are COLLATE "C" like those of the other tables:
-- byte order, as SQLite sorts, and no mixed collations in joins.

CREATE TABLE device_keys (
    user_id   TEXT COLLATE "C" NOT NULL,
    device_id TEXT COLLATE "C" NOT NULL,
    keys      TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_keys (
    user_id   TEXT COLLATE "C" NOT NULL,
    device_id TEXT COLLATE "C" NOT NULL,
    algorithm TEXT COLLATE "C" NOT NULL,
    key_id    TEXT COLLATE "C" NOT NULL,
    key       TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

CREATE TABLE fallback_keys (
    user_id   TEXT COLLATE "C" NOT NULL,
    device_id TEXT COLLATE "C" NOT NULL,
    algorithm TEXT COLLATE "C" NOT NULL,
    key_id    TEXT COLLATE "C" NOT NULL,
    key       TEXT NOT NULL,
    used      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- 'master', 'self_signing', 'user_signing'.
CREATE TABLE cross_signing_keys (
    user_id    TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL,
    public_key TEXT COLLATE "C" NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (user_id, kind)
);

-- Signatures added after upload (`/keys/signatures/upload`); the target is
-- a device id or a cross-signing key's public part.
CREATE TABLE key_signatures (
    target_user_id TEXT COLLATE "C" NOT NULL,
    target_key_id  TEXT COLLATE "C" NOT NULL,
    signer_user_id TEXT COLLATE "C" NOT NULL,
    signer_key_id  TEXT COLLATE "C" NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);
CREATE INDEX key_signatures_by_signer ON key_signatures (signer_user_id, signer_key_id);

-- The two streams' counters, like account data's and receipts' (0004):
-- incremented at the end of the writing transaction under the stream's
-- advisory lock, so positions commit in order and each counter is its
-- stream's "everything at or below is visible" watermark. The to-device
-- counter also keeps a position no message holds any more from being
-- handed out again (SQLite's `to_device_position`).
INSERT INTO stream_counters (stream, pos) VALUES ('device_lists', 0), ('to_device', 0);

-- One row per user: the position of the latest change of their devices or
-- keys.
CREATE TABLE device_list_changes (
    user_id    TEXT COLLATE "C" PRIMARY KEY,
    stream_pos BIGINT NOT NULL UNIQUE
);

-- Every device's inbox; each message its own position.
CREATE TABLE to_device_messages (
    stream_pos BIGINT PRIMARY KEY,
    user_id    TEXT COLLATE "C" NOT NULL,
    device_id  TEXT COLLATE "C" NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content    TEXT NOT NULL
);
CREATE INDEX to_device_by_device ON to_device_messages (user_id, device_id, stream_pos);
-- What one sender has waiting for one device (bounded per sender).
CREATE INDEX to_device_by_sender ON to_device_messages (user_id, device_id, sender);

-- Transaction ids of `/sendToDevice`, per sending device.
CREATE TABLE to_device_txns (
    user_id   TEXT COLLATE "C" NOT NULL,
    device_id TEXT COLLATE "C" NOT NULL,
    -- Per sending device, increasing: the oldest are forgotten first.
    seq       BIGINT NOT NULL,
    txn_id    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX to_device_txns_by_seq ON to_device_txns (user_id, device_id, seq);

-- Versions are numbered 1, 2, 3... per user and never reused: a deleted
-- version stays as a row marked deleted while it is the user's highest.
CREATE TABLE backup_versions (
    user_id   TEXT COLLATE "C" NOT NULL,
    version   BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag      BIGINT NOT NULL DEFAULT 0,
    key_count BIGINT NOT NULL DEFAULT 0,
    deleted   BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id             TEXT COLLATE "C" NOT NULL,
    version             BIGINT NOT NULL,
    room_id             TEXT COLLATE "C" NOT NULL,
    session_id          TEXT COLLATE "C" NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count     BIGINT NOT NULL,
    is_verified         BOOLEAN NOT NULL,
    session_data        TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

-- The user's dehydrated device: a row of `devices` besides this one.
CREATE TABLE dehydrated_devices (
    user_id     TEXT COLLATE "C" PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL,
    device_data TEXT NOT NULL
);
