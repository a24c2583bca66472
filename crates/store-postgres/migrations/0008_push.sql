-- The notifications events produced, written with the event. (Push rule
-- sets live in account data as `m.push_rules`, so /sync delivers changes.)
CREATE TABLE notifications (
    user_id   TEXT COLLATE "C" NOT NULL,
    event_id  TEXT COLLATE "C" NOT NULL,
    room_id   TEXT COLLATE "C" NOT NULL,
    actions   TEXT NOT NULL,
    highlight BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX notifications_by_room ON notifications (user_id, room_id);

-- "Up to where has this user read?": their newest event in the room.
CREATE INDEX events_by_sender ON events (room_id, sender, stream_pos);
