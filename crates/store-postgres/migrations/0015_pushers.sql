-- Pushers (store `PusherStore`, `pushers.rs`) and their delivery state:
-- the same table as SQLite's 0015_pushers.sql. The stored notifications
-- are the delivery queue: a pusher keeps the position up to which its
-- user's notifications are done (`delivered_pos`) and the position of
-- the user's newest notification (`queued_pos`, raised by the event's
-- append, under the stream lock, for every notified user with a pusher).
-- It has work while `queued_pos > delivered_pos`.
--
-- Identifier columns are COLLATE "C" like those of the other tables.
CREATE TABLE pushers (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id             TEXT COLLATE "C" NOT NULL,
    -- The device whose access token set it; deleted with it.
    device_id           TEXT COLLATE "C" NOT NULL,
    app_id              TEXT COLLATE "C" NOT NULL,
    pushkey             TEXT COLLATE "C" NOT NULL,
    kind                TEXT NOT NULL,
    app_display_name    TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag         TEXT,
    lang                TEXT NOT NULL,
    -- The `data` object as the client sent it, JSON text (not JSONB,
    -- which would rewrite it).
    data                TEXT NOT NULL,
    pushkey_ts          BIGINT NOT NULL,
    delivered_pos       BIGINT NOT NULL,
    queued_pos          BIGINT NOT NULL,
    failures            BIGINT NOT NULL DEFAULT 0,
    retry_at_ts         BIGINT NOT NULL DEFAULT 0,
    -- The node delivering it, until `lease_until_ts` (0: nobody).
    lease_owner         TEXT,
    lease_until_ts      BIGINT NOT NULL DEFAULT 0
);
-- A user's pushers; the append's update of `queued_pos` finds them here.
CREATE UNIQUE INDEX pushers_by_user ON pushers (user_id, app_id, pushkey);
-- Other users' pushers of the same pushkey (`append: false` removes them).
CREATE INDEX pushers_by_pushkey ON pushers (app_id, pushkey);
-- Pushers with undelivered notifications only, by when they are due.
CREATE INDEX pushers_with_work ON pushers (retry_at_ts) WHERE queued_pos > delivered_pos;
