-- A room's history from before this server joined it, fetched from other
-- servers for /messages (RoomHistoryStore). Apart from the events stream:
-- no stream position, no effect on state. `ordinal` 1 is the newest and
-- grows back in time; `shown` is false for an event also in the stream.
CREATE TABLE history_events (
    room_id          TEXT COLLATE "C" NOT NULL,
    ordinal          BIGINT NOT NULL,
    event_id         TEXT COLLATE "C" NOT NULL UNIQUE,
    event_type       TEXT COLLATE "C" NOT NULL,
    state_key        TEXT COLLATE "C",
    sender           TEXT COLLATE "C" NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    depth            BIGINT NOT NULL,
    json             TEXT NOT NULL,
    shown            BOOLEAN NOT NULL,
    PRIMARY KEY (room_id, ordinal)
);
CREATE INDEX history_events_by_type ON history_events (room_id, event_type, ordinal);

-- Rooms with history (joined through another server), and the ids of the
-- prev_events still to fetch.
CREATE TABLE history_rooms (
    room_id TEXT COLLATE "C" PRIMARY KEY
);
CREATE TABLE history_frontier (
    room_id  TEXT COLLATE "C" NOT NULL,
    event_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
