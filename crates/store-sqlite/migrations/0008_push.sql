-- The notifications events produced, written with the event. (Push rule
-- sets live in account data as `m.push_rules`, so /sync delivers changes.)
CREATE TABLE notifications (
    user_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    actions   TEXT NOT NULL,
    highlight INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_id)
) WITHOUT ROWID;
CREATE INDEX notifications_by_room ON notifications (user_id, room_id);

-- "Up to where has this user read?": their newest event in the room.
CREATE INDEX events_by_sender ON events (room_id, sender, stream_pos);
