-- Sync filters uploaded by clients (POST /user/{userId}/filter).
CREATE TABLE filters (
    user_id     TEXT NOT NULL,
    filter_id   INTEGER NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
) WITHOUT ROWID;
