-- A room's history from before this server joined it, fetched from other
-- servers for /messages (RoomHistoryStore). Apart from the events stream:
-- no stream position, no effect on state. `ordinal` 1 is the newest and
-- grows back in time; `shown` is 0 for an event also in the stream.
CREATE TABLE history_events (
    room_id          TEXT NOT NULL,
    ordinal          INTEGER NOT NULL,
    event_id         TEXT NOT NULL UNIQUE,
    event_type       TEXT NOT NULL,
    state_key        TEXT,
    sender           TEXT NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    depth            INTEGER NOT NULL,
    json             TEXT NOT NULL,
    shown            INTEGER NOT NULL,
    PRIMARY KEY (room_id, ordinal)
) WITHOUT ROWID;
CREATE INDEX history_events_by_type ON history_events (room_id, event_type, ordinal);

-- Rooms with history (joined through another server), and the ids of the
-- prev_events still to fetch.
CREATE TABLE history_rooms (
    room_id TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE history_frontier (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
) WITHOUT ROWID;
