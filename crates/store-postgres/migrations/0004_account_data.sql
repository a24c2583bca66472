-- Account data (global and per room, incl. m.tag and m.fully_read) and read
-- receipts, each with its own stream of positions beside the events stream.
--
-- Positions come from a counter row per stream in `stream_counters`,
-- incremented at the end of the writing transaction under the stream's own
-- advisory lock (held until commit), exactly like the events stream's
-- `stream_position`: positions commit in order on every node, so the
-- counter is also the "everything at or below is visible" watermark.
CREATE TABLE stream_counters (
    stream TEXT COLLATE "C" PRIMARY KEY,
    pos    BIGINT NOT NULL
);
INSERT INTO stream_counters (stream, pos) VALUES ('account_data', 0), ('receipts', 0);

CREATE TABLE account_data (
    user_id    TEXT COLLATE "C" NOT NULL,
    -- '' for global account data (a NULL would not be unique in the key).
    room_id    TEXT COLLATE "C" NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    -- A JSON object, as the client sent it (TEXT, not JSONB: kept as sent).
    content    TEXT NOT NULL,
    stream_pos BIGINT NOT NULL UNIQUE,
    PRIMARY KEY (user_id, room_id, event_type)
);
-- A user's changes since a sync token.
CREATE INDEX account_data_by_user_pos ON account_data (user_id, stream_pos);

-- One receipt per (room, user, type, thread): a new one replaces it.
CREATE TABLE receipts (
    room_id      TEXT COLLATE "C" NOT NULL,
    user_id      TEXT COLLATE "C" NOT NULL,
    receipt_type TEXT COLLATE "C" NOT NULL,
    -- '' for an unthreaded receipt; 'main' or a thread root's event id.
    thread_id    TEXT COLLATE "C" NOT NULL,
    event_id     TEXT COLLATE "C" NOT NULL,
    ts           BIGINT NOT NULL,
    stream_pos   BIGINT NOT NULL UNIQUE,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
-- A room's changes since a sync token.
CREATE INDEX receipts_by_room_pos ON receipts (room_id, stream_pos);
