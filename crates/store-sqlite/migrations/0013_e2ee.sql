-- End-to-end encryption, the server's part (store `KeyStore`): device,
-- one-time, fallback and cross-signing keys, signatures added to keys, the
-- device-list and to-device streams, key backups and dehydrated devices.
-- Key objects are the clients' JSON, canonicalised by the service.

CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys      TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key       TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
) WITHOUT ROWID;

CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key       TEXT NOT NULL,
    used      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
) WITHOUT ROWID;

-- 'master', 'self_signing', 'user_signing'.
CREATE TABLE cross_signing_keys (
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (user_id, kind)
) WITHOUT ROWID;

-- Signatures added after upload (`/keys/signatures/upload`); the target is
-- a device id or a cross-signing key's public part.
CREATE TABLE key_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
) WITHOUT ROWID;
CREATE INDEX key_signatures_by_signer ON key_signatures (signer_user_id, signer_key_id);

-- One row per user: the position of the latest change of their devices or
-- keys (MAX + 1 under the single writer, like the other side streams).
CREATE TABLE device_list_changes (
    user_id    TEXT PRIMARY KEY,
    stream_pos INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;

-- Every device's inbox; each message its own position.
CREATE TABLE to_device_messages (
    stream_pos INTEGER PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content    TEXT NOT NULL
);
CREATE INDEX to_device_by_device ON to_device_messages (user_id, device_id, stream_pos);
-- What one sender has waiting for one device (bounded per sender).
CREATE INDEX to_device_by_sender ON to_device_messages (user_id, device_id, sender);
-- A position no message holds any more is still never handed out again.
CREATE TABLE to_device_position (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    pos INTEGER NOT NULL
);
INSERT INTO to_device_position (id, pos) VALUES (0, 0);

-- Transaction ids of `/sendToDevice`, per sending device.
CREATE TABLE to_device_txns (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    -- Per sending device, increasing: the oldest are forgotten first.
    seq       INTEGER NOT NULL,
    txn_id    TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
) WITHOUT ROWID;
CREATE INDEX to_device_txns_by_seq ON to_device_txns (user_id, device_id, seq);

CREATE TABLE backup_versions (
    user_id   TEXT NOT NULL,
    version   INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag      INTEGER NOT NULL DEFAULT 0,
    key_count INTEGER NOT NULL DEFAULT 0,
    deleted   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
) WITHOUT ROWID;

CREATE TABLE backup_keys (
    user_id             TEXT NOT NULL,
    version             INTEGER NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count     INTEGER NOT NULL,
    is_verified         INTEGER NOT NULL,
    session_data        TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
) WITHOUT ROWID;

-- The user's dehydrated device: a row of `devices` besides this one.
CREATE TABLE dehydrated_devices (
    user_id     TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    device_data TEXT NOT NULL
) WITHOUT ROWID;
