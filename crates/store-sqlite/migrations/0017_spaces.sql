-- Paused walks of a space hierarchy (`GET /rooms/{roomId}/hierarchy`),
-- one row per `next_batch` token: the frontier and the rooms visited, so
-- the next page is answered by any node and lists no room twice. Rows
-- expire after minutes and are bounded per user (HierarchyStore).
CREATE TABLE hierarchy_walks (
    token          TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    room_id        TEXT NOT NULL,
    suggested_only INTEGER NOT NULL,
    max_depth      INTEGER NOT NULL,
    walk           TEXT NOT NULL,
    created_ts     INTEGER NOT NULL
);
CREATE INDEX hierarchy_walks_by_user ON hierarchy_walks (user_id, created_ts);
CREATE INDEX hierarchy_walks_by_age ON hierarchy_walks (created_ts);
