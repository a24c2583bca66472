-- Simplified sliding sync (MSC4186).
--
-- The room list sorts by each room's newest "bump" event, filters by
-- room type, and sees which rooms moved on since a connection last sent
-- them by their newest event: all kept on the room by every append, so a
-- user's list is one read of their memberships joined with their rooms.
ALTER TABLE rooms ADD COLUMN bump_pos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN last_pos INTEGER NOT NULL DEFAULT 0;
UPDATE rooms SET last_pos = COALESCE((SELECT MAX(e.stream_pos) FROM events e WHERE e.room_id = rooms.room_id), 0);
ALTER TABLE rooms ADD COLUMN room_type TEXT;
UPDATE rooms SET bump_pos = COALESCE((
    SELECT MAX(e.stream_pos) FROM events e
    WHERE e.room_id = rooms.room_id
      AND e.event_type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker', 'm.call.invite',
                           'm.poll.start', 'm.beacon_info', 'org.matrix.msc3381.poll.start', 'org.matrix.msc3672.beacon_info')
), 0);
UPDATE rooms SET room_type = (
    SELECT json_extract(e.json, '$.content.type') FROM events e
    WHERE e.room_id = rooms.room_id AND e.event_type = 'm.room.create' AND e.state_key = ''
      AND json_type(e.json, '$.content.type') = 'text'
);

-- A connection: a device's `conn_id`. `conn_key` is never reused
-- (AUTOINCREMENT), so a position of a restarted connection is refused.
CREATE TABLE sliding_sync_connections (
    conn_key     INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    conn_id      TEXT NOT NULL,
    next_pos     INTEGER NOT NULL DEFAULT 1,
    last_used_ts INTEGER NOT NULL,
    UNIQUE (user_id, device_id, conn_id)
);
CREATE INDEX sliding_sync_connections_by_use ON sliding_sync_connections (last_used_ts);

-- The positions a connection's client may still send: the one it
-- acknowledged last and the answer after it.
CREATE TABLE sliding_sync_positions (
    conn_key INTEGER NOT NULL,
    pos      INTEGER NOT NULL,
    token    TEXT NOT NULL,
    PRIMARY KEY (conn_key, pos)
) WITHOUT ROWID;

-- What each answer recorded of a room; a room's state at a position is
-- its newest record at or before it.
CREATE TABLE sliding_sync_rooms (
    conn_key INTEGER NOT NULL,
    room_id  TEXT NOT NULL,
    pos      INTEGER NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (conn_key, room_id, pos)
) WITHOUT ROWID;
CREATE INDEX sliding_sync_rooms_by_pos ON sliding_sync_rooms (conn_key, pos);
