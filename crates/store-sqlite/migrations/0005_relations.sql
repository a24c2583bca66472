-- Relations between events: one row per event whose content["m.relates_to"]
-- the service accepted (same room as a known parent, the rules of its
-- rel_type). A table of its own rather than columns on `events`: most
-- events relate to nothing, and these indexes then cost them nothing.
-- A redaction of the child deletes its row (the relation is broken).
--
-- Events stored before this migration have no rows: no deployment predates
-- it, and re-validating old relations in SQL would apply different rules
-- than the service does.
CREATE TABLE relations (
    -- The child.
    event_id   TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    -- The parent.
    relates_to TEXT NOT NULL,
    rel_type   TEXT NOT NULL,
    -- Type and sender of the child, copied so filters and aggregations
    -- read this table only.
    event_type TEXT NOT NULL,
    sender     TEXT NOT NULL,
    -- The annotation key of an m.annotation, NULL otherwise.
    rel_key    TEXT,
    -- The child's stream position: the order of /relations pages.
    stream_pos INTEGER NOT NULL
) WITHOUT ROWID;
-- Children of a parent by type, in stream order (/relations, thread
-- counts and latest replies, references, edits).
CREATE INDEX relations_by_parent ON relations (relates_to, rel_type, stream_pos);
-- Whether a user replied in a thread or already sent an annotation.
CREATE INDEX relations_by_parent_sender ON relations (relates_to, rel_type, sender);

-- One row per thread root with a reply: the position of its latest reply
-- orders /threads. Kept by the append of a reply and by the redaction of
-- one (the row goes when the last reply is redacted).
CREATE TABLE threads (
    root_id    TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    latest_pos INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX threads_by_latest ON threads (room_id, latest_pos);

-- /timestamp_to_event: the first or last event of a room around a time.
CREATE INDEX events_by_room_ts ON events (room_id, origin_server_ts);
