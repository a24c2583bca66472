-- Nothing to do: on SQLite this migration makes report ids never reused
-- (AUTOINCREMENT), which PostgreSQL's identity column in 0006 already
-- guarantees (a sequence never hands out a number twice). The file keeps
-- migration numbers meaning the same change on both backends.
SELECT 1;
