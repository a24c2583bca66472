-- A logged-in user's open interactive-auth session of an operation is
-- looked up (and their sessions counted) on every unauthenticated call of
-- that operation: reused rather than a new row each time.
CREATE INDEX uia_sessions_by_user ON uia_sessions (user_id, operation, created_ts);
