-- Other servers' users' device and cross-signing keys as their servers
-- answered (RemoteKeyCacheStore): valid while the user's device-list
-- position (device_list_changes) is still list_pos.
CREATE TABLE remote_device_keys (
    user_id    TEXT PRIMARY KEY,
    keys       TEXT NOT NULL,
    list_pos   INTEGER NOT NULL,
    fetched_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX remote_device_keys_by_age ON remote_device_keys (fetched_ts);
