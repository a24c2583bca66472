-- The rooms that moved on since a stream position, for the sliding-sync
-- room list kept in memory and brought up to date by what changed
-- (`room_list_changes`), instead of reading a user's thousands of
-- memberships on every answer.
CREATE INDEX rooms_last_pos ON rooms (last_pos);
