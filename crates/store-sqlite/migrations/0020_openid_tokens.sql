-- OpenID tokens (`POST /user/{userId}/openid/request_token`), stored only
-- as SHA-256 digests, valid until `expires_ts`, so any node answers
-- `/_matrix/federation/v1/openid/userinfo`. Bounded per user and purged
-- by the maintenance pass once expired (OpenIdStore).
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts INTEGER NOT NULL,
    created_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX openid_tokens_by_user ON openid_tokens (user_id, created_ts);
CREATE INDEX openid_tokens_by_expiry ON openid_tokens (expires_ts);
