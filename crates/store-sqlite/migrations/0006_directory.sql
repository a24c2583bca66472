-- Room addresses, the published room directory, forgotten rooms and
-- content reports.

-- Local aliases (#name:this.server). Upgrades move them to the new room.
CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL REFERENCES rooms (room_id),
    creator    TEXT NOT NULL,
    created_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX room_aliases_by_room ON room_aliases (room_id, alias);

-- Rooms listed in /publicRooms.
CREATE TABLE room_directory (
    room_id TEXT PRIMARY KEY REFERENCES rooms (room_id)
) WITHOUT ROWID;

-- A forget names the membership event it forgot: a later membership
-- event of the user in the room is not forgotten.
CREATE TABLE forgotten_rooms (
    user_id             TEXT NOT NULL,
    room_id             TEXT NOT NULL,
    membership_event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;

-- Reports of events (event_id set) and rooms (event_id NULL) for admins.
CREATE TABLE content_reports (
    report_id  INTEGER PRIMARY KEY,
    room_id    TEXT NOT NULL,
    event_id   TEXT,
    reporter   TEXT NOT NULL,
    reason     TEXT,
    score      INTEGER,
    created_ts INTEGER NOT NULL
);
-- The per-reporter window count.
CREATE INDEX content_reports_by_reporter ON content_reports (reporter, created_ts);
