-- Notifications keyed by user, room and their event's stream position.
-- Sending a message writes one row per notified member; each goes at the
-- end of that member's range for the room, so a message touches the same
-- few pages as the one before (keyed by event id, each row went to a
-- random place, and a second index doubled the pages). The unread counts
-- of a room are one range count; `GET /notifications` merges the user's
-- per-room ranges. The event is found by its position.
CREATE TABLE notifications_by_position (
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    actions    TEXT NOT NULL,
    highlight  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_pos)
) WITHOUT ROWID;
INSERT INTO notifications_by_position (user_id, room_id, stream_pos, actions, highlight)
    SELECT n.user_id, n.room_id, e.stream_pos, n.actions, n.highlight
    FROM notifications n JOIN events e ON e.event_id = n.event_id;
DROP TABLE notifications;
ALTER TABLE notifications_by_position RENAME TO notifications;
