-- Jobs one node of a cluster runs at a time (JobLeaseStore): who holds
-- each and until when.
CREATE TABLE job_leases (
    job      TEXT PRIMARY KEY,
    node     TEXT NOT NULL,
    until_ts INTEGER NOT NULL
) WITHOUT ROWID;
