-- Jobs one node of a cluster runs at a time (JobLeaseStore): who holds
-- each and until when.
CREATE TABLE job_leases (
    job      TEXT COLLATE "C" PRIMARY KEY,
    node     TEXT COLLATE "C" NOT NULL,
    until_ts BIGINT NOT NULL
);
