-- Rooms, their events in one stream, and room state as a temporal table.
--
-- Every identifier and key column is COLLATE "C": byte order, as SQLite
-- sorts, and one collation everywhere so joins between these tables never
-- mix collations.
CREATE TABLE rooms (
    room_id      TEXT COLLATE "C" PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator      TEXT NOT NULL,
    created_ts   BIGINT NOT NULL,
    -- Largest depth of the room's events, kept up to date by every append
    -- (cheaper than MAX over the room's events on every send). Appends
    -- update it first, which also locks the room row for the transaction.
    max_depth    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE events (
    event_id         TEXT COLLATE "C" PRIMARY KEY,
    room_id          TEXT COLLATE "C" NOT NULL REFERENCES rooms (room_id),
    stream_pos       BIGINT NOT NULL UNIQUE,
    event_type       TEXT COLLATE "C" NOT NULL,
    state_key        TEXT COLLATE "C",
    sender           TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    depth            BIGINT NOT NULL,
    -- The signed PDU as canonical JSON, byte for byte (not JSONB, which
    -- would reorder keys and break signatures).
    json             TEXT NOT NULL,
    membership       TEXT,
    txn_user         TEXT,
    txn_device       TEXT,
    txn_id           TEXT
);
CREATE INDEX events_by_room ON events (room_id, stream_pos);
CREATE UNIQUE INDEX events_txn_key ON events (txn_user, txn_device, txn_id) WHERE txn_id IS NOT NULL;

-- One row per state event, in force for from_pos <= p < to_pos (to_pos
-- NULL: still in force). from_pos is unique, so it completes the key.
CREATE TABLE room_state (
    room_id    TEXT COLLATE "C" NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    state_key  TEXT COLLATE "C" NOT NULL,
    event_id   TEXT COLLATE "C" NOT NULL,
    membership TEXT,
    from_pos   BIGINT NOT NULL,
    to_pos     BIGINT,
    PRIMARY KEY (room_id, event_type, state_key, from_pos)
);
-- Current state: at most one row per (room, type, state_key).
CREATE UNIQUE INDEX room_state_current ON room_state (room_id, event_type, state_key) WHERE to_pos IS NULL;
-- State changes in a range of positions (incremental sync).
CREATE INDEX room_state_by_start ON room_state (room_id, from_pos);
-- Replaced rows by end: state at a past position is the current rows that
-- started by then plus the replaced rows that ended after it.
CREATE INDEX room_state_by_end ON room_state (room_id, to_pos) WHERE to_pos IS NOT NULL;
-- The rooms a user is in.
CREATE INDEX room_state_memberships ON room_state (state_key, room_id)
    WHERE to_pos IS NULL AND event_type = 'm.room.member';

-- Events with no successor yet: the prev_events of the next event.
CREATE TABLE forward_extremities (
    room_id  TEXT COLLATE "C" NOT NULL,
    event_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- The first accepted redaction of an event wins.
CREATE TABLE redactions (
    target_event_id    TEXT COLLATE "C" PRIMARY KEY,
    redaction_event_id TEXT NOT NULL
);

-- The last allocated stream position (one row). See rooms.rs: a position
-- is allocated at the end of the writing transaction, under an advisory
-- lock held until commit, so positions commit in order on every node.
CREATE TABLE stream_position (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    pos BIGINT NOT NULL
);
INSERT INTO stream_position (pos) VALUES (0);
