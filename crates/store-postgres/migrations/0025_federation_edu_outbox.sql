-- EDUs that must reach another server (to-device messages, device-list
-- and cross-signing updates), per destination, until it acknowledged a
-- transaction holding them (FederationStore). A destination's EDUs are
-- sent in id order (a request commits its EDUs before it answers, so
-- requests one after the other get growing ids).
CREATE TABLE federation_edu_outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination TEXT COLLATE "C" NOT NULL,
    json        TEXT NOT NULL,
    queued_ms   BIGINT NOT NULL
);
CREATE INDEX federation_edu_outbox_by_destination ON federation_edu_outbox (destination, id);
