-- Server-side search: one row per searchable event. The 'simple'
-- configuration does no stemming, so every language of an administration
-- is matched alike.
CREATE TABLE event_search (
    stream_pos BIGINT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    key        TEXT NOT NULL,
    vector     TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
