-- Room addresses, the published room directory, forgotten rooms and
-- content reports. Identifier columns are COLLATE "C" like those of
-- 0002_rooms.sql, so joins with room_state never mix collations.

-- Local aliases (#name:this.server). Upgrades move them to the new room.
CREATE TABLE room_aliases (
    alias      TEXT COLLATE "C" PRIMARY KEY,
    room_id    TEXT COLLATE "C" NOT NULL REFERENCES rooms (room_id),
    creator    TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_by_room ON room_aliases (room_id, alias);

-- Rooms listed in /publicRooms.
CREATE TABLE room_directory (
    room_id TEXT COLLATE "C" PRIMARY KEY REFERENCES rooms (room_id)
);

-- A forget names the membership event it forgot: a later membership
-- event of the user in the room is not forgotten.
CREATE TABLE forgotten_rooms (
    user_id             TEXT COLLATE "C" NOT NULL,
    room_id             TEXT COLLATE "C" NOT NULL,
    membership_event_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- Reports of events (event_id set) and rooms (event_id NULL) for admins.
CREATE TABLE content_reports (
    report_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id    TEXT COLLATE "C" NOT NULL,
    event_id   TEXT COLLATE "C",
    reporter   TEXT COLLATE "C" NOT NULL,
    reason     TEXT,
    score      BIGINT,
    created_ts BIGINT NOT NULL
);
-- The per-reporter window count.
CREATE INDEX content_reports_by_reporter ON content_reports (reporter, created_ts);
