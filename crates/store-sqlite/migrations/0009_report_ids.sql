-- Report ids are never reused: admins list, read and delete reports by id,
-- and a plain INTEGER PRIMARY KEY hands the id of a deleted newest report
-- to the next one, so a repeated DELETE could remove a report nobody read.
-- SQLite adds AUTOINCREMENT only by rebuilding the table.
CREATE TABLE content_reports_new (
    report_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id    TEXT NOT NULL,
    event_id   TEXT,
    reporter   TEXT NOT NULL,
    reason     TEXT,
    score      INTEGER,
    created_ts INTEGER NOT NULL
);
INSERT INTO content_reports_new (report_id, room_id, event_id, reporter, reason, score, created_ts)
    SELECT report_id, room_id, event_id, reporter, reason, score, created_ts FROM content_reports;
DROP TABLE content_reports;
ALTER TABLE content_reports_new RENAME TO content_reports;
-- The per-reporter window count.
CREATE INDEX content_reports_by_reporter ON content_reports (reporter, created_ts);
