-- Sliding-sync connection state moves to a file of its own beside the
-- database (see `sliding_sync::ConnectionFile`): written by every answer,
-- it made every reader drop its page cache and paid an fsync. Open
-- connections start over (`M_UNKNOWN_POS`), as after their expiry.
DROP TABLE sliding_sync_rooms;
DROP TABLE sliding_sync_positions;
DROP TABLE sliding_sync_connections;
