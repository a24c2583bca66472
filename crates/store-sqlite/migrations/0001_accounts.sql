-- Accounts, devices with their tokens (stored only as SHA-256 digests),
-- profiles, registration tokens and interactive-auth sessions.
CREATE TABLE accounts (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    is_admin       INTEGER NOT NULL DEFAULT 0,
    deactivated_ts INTEGER,
    created_ts     INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE devices (
    user_id                 TEXT NOT NULL REFERENCES accounts (user_id),
    device_id               TEXT NOT NULL,
    display_name            TEXT,
    created_ts              INTEGER NOT NULL,
    access_token_hash       TEXT NOT NULL UNIQUE,
    access_expires_ts       INTEGER,
    refresh_token_hash      TEXT UNIQUE,
    prev_refresh_token_hash TEXT UNIQUE,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE profile_fields (
    user_id TEXT NOT NULL REFERENCES accounts (user_id),
    field   TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
) WITHOUT ROWID;

CREATE TABLE registration_tokens (
    token        TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    completed    INTEGER NOT NULL DEFAULT 0,
    expiry_ts    INTEGER,
    created_ts   INTEGER NOT NULL,
    revoked_ts   INTEGER
) WITHOUT ROWID;

CREATE TABLE uia_sessions (
    session_id         TEXT PRIMARY KEY,
    operation          TEXT NOT NULL,
    user_id            TEXT,
    completed          TEXT NOT NULL,
    registration_token TEXT,
    created_ts         INTEGER NOT NULL
);
CREATE INDEX uia_sessions_by_age ON uia_sessions (created_ts);
