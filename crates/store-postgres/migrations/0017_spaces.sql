-- Paused walks of a space hierarchy (`GET /rooms/{roomId}/hierarchy`),
-- one row per `next_batch` token: the frontier and the rooms visited, so
-- the next page is answered by any node and lists no room twice. Rows
-- expire after minutes and are bounded per user (HierarchyStore).
CREATE TABLE hierarchy_walks (
    token          TEXT COLLATE "C" PRIMARY KEY,
    user_id        TEXT COLLATE "C" NOT NULL,
    room_id        TEXT COLLATE "C" NOT NULL,
    suggested_only BOOLEAN NOT NULL,
    max_depth      BIGINT NOT NULL,
    walk           TEXT NOT NULL,
    created_ts     BIGINT NOT NULL
);
CREATE INDEX hierarchy_walks_by_user ON hierarchy_walks (user_id, created_ts);
CREATE INDEX hierarchy_walks_by_age ON hierarchy_walks (created_ts);
