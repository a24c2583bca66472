-- The sliding-sync room list of a user in thousands of rooms is one
-- scan of their memberships joined with their rooms (issue 14's first
-- screen). Two lookups per room made it slow:
--
-- The memberships index now covers what the list reads (the membership,
-- its event and, through the key, its position), so the scan never
-- descends into room_state itself; `to_pos` is in it only so that SQLite
-- sees the index as covering.
DROP INDEX room_state_memberships;
CREATE INDEX room_state_memberships ON room_state (state_key, room_id, membership, event_id, to_pos)
    WHERE to_pos IS NULL AND event_type = 'm.room.member';

-- Whether the room is encrypted, kept by every append like `room_type`
-- (encryption is never turned off), instead of a look into the room's
-- current state per room.
ALTER TABLE rooms ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
UPDATE rooms SET encrypted = 1 WHERE EXISTS (
    SELECT 1 FROM room_state s
    WHERE s.room_id = rooms.room_id AND s.event_type = 'm.room.encryption' AND s.state_key = '' AND s.to_pos IS NULL
);
