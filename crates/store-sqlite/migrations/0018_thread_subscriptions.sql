-- Thread subscriptions (MSC4306), one row per user and thread: the latest
-- change, at its position in the thread-subscriptions stream.
-- Unsubscriptions stay as rows (`subscribed = 0`) so the change reaches
-- the user's other devices (MSC4308); `unsubscribed_at_pos` is the room's
-- newest event position when the user unsubscribed (an automatic
-- subscription caused by an event at or before it is refused).
CREATE TABLE thread_subscriptions (
    user_id             TEXT NOT NULL,
    room_id             TEXT NOT NULL,
    thread_root_id      TEXT NOT NULL,
    subscribed          INTEGER NOT NULL,
    automatic           INTEGER NOT NULL,
    unsubscribed_at_pos INTEGER,
    stream_pos          INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (user_id, room_id, thread_root_id)
) WITHOUT ROWID;
-- The user's changes in stream order (sliding sync, pagination).
CREATE INDEX thread_subscriptions_by_user ON thread_subscriptions (user_id, stream_pos);
-- A thread's subscribers (push evaluation of each reply).
CREATE INDEX thread_subscriptions_by_thread ON thread_subscriptions (room_id, thread_root_id, user_id) WHERE subscribed = 1;
-- The stream's counter, not the table's maximum: rows are deleted with
-- their account, and a position must never be handed out twice.
CREATE TABLE thread_subscriptions_position (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    pos INTEGER NOT NULL
);
INSERT INTO thread_subscriptions_position (id, pos) VALUES (0, 0);
