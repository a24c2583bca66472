-- Server-side search: one FTS5 row per searchable event, whose rowid is the
-- event's stream position (so a redaction removes it by key).
CREATE VIRTUAL TABLE event_search USING fts5 (
    text,
    key UNINDEXED,
    room_id UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);
