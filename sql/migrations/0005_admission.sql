-- Admission at send time: idempotency keys and rate limits.

-- idempotency=: one run per (function, key) while `expires_at` is ahead.
CREATE TABLE {schema}.run_keys (
    function_id text NOT NULL,
    key         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);

-- rate_limit=: the generic cell rate algorithm's theoretical arrival time
-- per (function, key): a run is admitted if it keeps `tat` within one
-- period of now, so at most `limit` runs start in any period.
CREATE TABLE {schema}.rate_limits (
    function_id text NOT NULL,
    key         text NOT NULL,
    tat         timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);
