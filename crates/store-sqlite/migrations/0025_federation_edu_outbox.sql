-- EDUs that must reach another server (to-device messages, device-list
-- and cross-signing updates), per destination, until it acknowledged a
-- transaction holding them (FederationStore). Ids only grow
-- (AUTOINCREMENT): a destination's EDUs are sent in id order.
CREATE TABLE federation_edu_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    json        TEXT NOT NULL,
    queued_ms   INTEGER NOT NULL
);
CREATE INDEX federation_edu_outbox_by_destination ON federation_edu_outbox (destination, id);
