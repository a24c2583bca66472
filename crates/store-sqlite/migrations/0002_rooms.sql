-- Rooms, their events in one stream, and room state as a temporal table.
--
-- Stream positions: the single writer connection allocates
-- MAX(stream_pos) + 1 inside its IMMEDIATE transaction, so positions are
-- dense and become visible in order. `stream_pos` is the rowid, so the
-- allocation and range scans by position read the table's own b-tree.
CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator      TEXT NOT NULL,
    created_ts   INTEGER NOT NULL,
    -- Largest depth of the room's events, kept up to date by every append
    -- (cheaper than MAX over the room's events on every send).
    max_depth    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE events (
    stream_pos       INTEGER PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    room_id          TEXT NOT NULL REFERENCES rooms (room_id),
    event_type       TEXT NOT NULL,
    state_key        TEXT,
    sender           TEXT NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    depth            INTEGER NOT NULL,
    -- The signed PDU as canonical JSON, byte for byte.
    json             TEXT NOT NULL,
    membership       TEXT,
    txn_user         TEXT,
    txn_device       TEXT,
    txn_id           TEXT
);
CREATE INDEX events_by_room ON events (room_id, stream_pos);
CREATE UNIQUE INDEX events_by_txn ON events (txn_user, txn_device, txn_id) WHERE txn_id IS NOT NULL;

-- One row per state event, in force for from_pos <= p < to_pos (to_pos
-- NULL: still in force). from_pos is unique, so it completes the key.
CREATE TABLE room_state (
    room_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    membership TEXT,
    from_pos   INTEGER NOT NULL,
    to_pos     INTEGER,
    PRIMARY KEY (room_id, event_type, state_key, from_pos)
) WITHOUT ROWID;
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
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
) WITHOUT ROWID;

-- The first accepted redaction of an event wins.
CREATE TABLE redactions (
    target_event_id    TEXT PRIMARY KEY,
    redaction_event_id TEXT NOT NULL
) WITHOUT ROWID;
