-- The outbound federation queue (FederationStore): the events table is the
-- queue; per destination server, the position up to which its events were
-- acknowledged (`sent_pos`), and once, the position up to which
-- membership changes were looked at for new destinations.
CREATE TABLE federation_destinations (
    server_name TEXT COLLATE "C" PRIMARY KEY,
    sent_pos    BIGINT NOT NULL
);
CREATE TABLE federation_discovery (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    scanned_pos BIGINT NOT NULL
);
