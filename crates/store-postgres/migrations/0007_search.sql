-- Server-side search: one row per searchable event, written before the
-- event takes its stream position (so it adds nothing to the stream lock
-- window). The 'simple' configuration does no stemming, so every language
-- of an administration is matched alike.
CREATE TABLE event_search (
    event_id TEXT COLLATE "C" PRIMARY KEY,
    room_id  TEXT COLLATE "C" NOT NULL,
    key      TEXT NOT NULL,
    vector   TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
