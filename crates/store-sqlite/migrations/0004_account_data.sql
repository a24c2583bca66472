-- Account data (global and per room, incl. m.tag and m.fully_read) and read
-- receipts, each with its own stream of positions beside the events stream.
--
-- Positions: the single writer connection allocates MAX(stream_pos) + 1 of
-- the table inside its IMMEDIATE transaction, so they increase and become
-- visible in order. A change replaces its row and moves it to the new
-- position; rows are never deleted, so MAX never goes back. The UNIQUE
-- constraint doubles as the index that makes MAX cheap.
CREATE TABLE account_data (
    user_id    TEXT NOT NULL,
    -- '' for global account data (a NULL would not be unique in the key).
    room_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    -- A JSON object, as the client sent it.
    content    TEXT NOT NULL,
    stream_pos INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (user_id, room_id, event_type)
) WITHOUT ROWID;
-- A user's changes since a sync token.
CREATE INDEX account_data_by_user_pos ON account_data (user_id, stream_pos);

-- One receipt per (room, user, type, thread): a new one replaces it.
CREATE TABLE receipts (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    -- '' for an unthreaded receipt; 'main' or a thread root's event id.
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           INTEGER NOT NULL,
    stream_pos   INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
) WITHOUT ROWID;
-- A room's changes since a sync token.
CREATE INDEX receipts_by_room_pos ON receipts (room_id, stream_pos);
