-- Delayed events (MSC4140): events users scheduled to be sent later, one
-- row each until it is sent, cancelled or given up (DelayedEventStore).
-- `send_ts` is when it is due, or for a claimed row when its claim runs
-- out; `txn_id` makes a retried `/send` find its row.
CREATE TABLE delayed_events (
    delay_id   TEXT COLLATE "C" PRIMARY KEY,
    user_id    TEXT COLLATE "C" NOT NULL,
    device_id  TEXT COLLATE "C" NOT NULL,
    room_id    TEXT COLLATE "C" NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    state_key  TEXT COLLATE "C",
    content    TEXT NOT NULL,
    delay_ms   BIGINT NOT NULL,
    send_ts    BIGINT NOT NULL,
    claimed    BOOLEAN NOT NULL DEFAULT FALSE,
    txn_id     TEXT COLLATE "C"
);
CREATE INDEX delayed_events_by_send_ts ON delayed_events (send_ts);
CREATE INDEX delayed_events_by_user ON delayed_events (user_id, send_ts);
CREATE INDEX delayed_events_by_state ON delayed_events (room_id, event_type, state_key) WHERE state_key IS NOT NULL;
CREATE UNIQUE INDEX delayed_events_txn ON delayed_events (user_id, device_id, txn_id) WHERE txn_id IS NOT NULL;
