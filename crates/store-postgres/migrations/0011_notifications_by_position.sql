-- Notifications keyed by user, room and their event's stream position (as
-- on SQLite): an event's rows go at the end of each member's range for the
-- room instead of at random places keyed by event id, with one b-tree
-- instead of two; the unread counts of a room are one range count. Rows
-- are written under the stream lock, with the event's position.
CREATE TABLE notifications_by_position (
    user_id    TEXT COLLATE "C" NOT NULL,
    room_id    TEXT COLLATE "C" NOT NULL,
    stream_pos BIGINT NOT NULL,
    actions    TEXT NOT NULL,
    highlight  BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_pos)
);
INSERT INTO notifications_by_position (user_id, room_id, stream_pos, actions, highlight)
    SELECT n.user_id, n.room_id, e.stream_pos, n.actions, n.highlight
    FROM notifications n JOIN events e ON e.event_id = n.event_id;
DROP TABLE notifications;
ALTER TABLE notifications_by_position RENAME TO notifications;
ALTER INDEX notifications_by_position_pkey RENAME TO notifications_pkey;
