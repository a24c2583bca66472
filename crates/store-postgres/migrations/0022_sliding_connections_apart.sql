-- Sliding-sync connection state is disposable (a lost position answers
-- `M_UNKNOWN_POS` and the client starts over), and every answer writes
-- it: unlogged, it costs no WAL and its commits wait for no flush. A crash
-- empties these tables. The key sequence stays logged, so a key handed
-- out before a crash is never handed out again.
ALTER TABLE sliding_sync_rooms SET UNLOGGED;
ALTER TABLE sliding_sync_positions SET UNLOGGED;
ALTER TABLE sliding_sync_connections SET UNLOGGED;
ALTER SEQUENCE sliding_sync_connections_conn_key_seq SET LOGGED;
