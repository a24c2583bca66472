-- Accounts, devices with their tokens (stored only as SHA-256 digests),
-- profiles, registration tokens and interactive-auth sessions.
--
-- Columns the API lists in order are COLLATE "C": byte order, as SQLite
-- sorts, whatever locale the cluster was created with.
CREATE TABLE accounts (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    is_admin       BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated_ts BIGINT,
    created_ts     BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id                 TEXT NOT NULL REFERENCES accounts (user_id),
    device_id               TEXT COLLATE "C" NOT NULL,
    display_name            TEXT,
    created_ts              BIGINT NOT NULL,
    access_token_hash       TEXT NOT NULL UNIQUE,
    access_expires_ts       BIGINT,
    refresh_token_hash      TEXT UNIQUE,
    prev_refresh_token_hash TEXT UNIQUE,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE profile_fields (
    user_id TEXT NOT NULL REFERENCES accounts (user_id),
    field   TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
);

CREATE TABLE registration_tokens (
    token        TEXT COLLATE "C" PRIMARY KEY,
    uses_allowed BIGINT,
    completed    BIGINT NOT NULL DEFAULT 0,
    expiry_ts    BIGINT,
    created_ts   BIGINT NOT NULL,
    revoked_ts   BIGINT
);

CREATE TABLE uia_sessions (
    session_id         TEXT PRIMARY KEY,
    operation          TEXT NOT NULL,
    user_id            TEXT,
    completed          TEXT NOT NULL,
    registration_token TEXT,
    created_ts         BIGINT NOT NULL
);
CREATE INDEX uia_sessions_by_age ON uia_sessions (created_ts);
