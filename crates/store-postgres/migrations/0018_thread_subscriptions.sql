-- Thread subscriptions (MSC4306), one row per user and thread: the latest
-- change, at its position in the thread-subscriptions stream.
-- Unsubscriptions stay as rows (`subscribed = false`) so the change
-- reaches the user's other devices (MSC4308); `unsubscribed_at_pos` is
-- the room's newest event position when the user unsubscribed (an
-- automatic subscription caused by an event at or before it is refused).
-- Positions come from the `thread_subscriptions` row of `stream_counters`,
-- moved under an advisory lock held until commit, so they commit in order.
CREATE TABLE thread_subscriptions (
    user_id             TEXT COLLATE "C" NOT NULL,
    room_id             TEXT COLLATE "C" NOT NULL,
    thread_root_id      TEXT COLLATE "C" NOT NULL,
    subscribed          BOOLEAN NOT NULL,
    automatic           BOOLEAN NOT NULL,
    unsubscribed_at_pos BIGINT,
    stream_pos          BIGINT NOT NULL UNIQUE,
    PRIMARY KEY (user_id, room_id, thread_root_id)
);
CREATE INDEX thread_subscriptions_by_user ON thread_subscriptions (user_id, stream_pos);
CREATE INDEX thread_subscriptions_by_thread ON thread_subscriptions (room_id, thread_root_id, user_id) WHERE subscribed;
INSERT INTO stream_counters (stream, pos) VALUES ('thread_subscriptions', 0);
