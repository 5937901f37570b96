-- Durable waits: sleeping runs, runs waiting for an event, and runs waiting
-- for a child run (invoke). A parked run keeps its `queue` row, with status
-- `sleeping` or `waiting` and `available_at` set to its wake-up time or
-- timeout, so the ordinary claim wakes it then; no worker holds it meanwhile.

ALTER TABLE {schema}.steps DROP CONSTRAINT steps_status_check;
ALTER TABLE {schema}.steps ADD CONSTRAINT steps_status_check
    CHECK (status IN ('completed', 'failed', 'retrying', 'sleeping', 'waiting'));

-- One row per (waiting step, event name it accepts). An event wakes the
-- step when its field at `match_path` equals `match_value` (both empty/null
-- for "any event of that name") and `condition`, if any, holds for it.
CREATE TABLE {schema}.waits (
    run_id         uuid NOT NULL,
    step_key       text NOT NULL,
    event_name     text NOT NULL,
    match_path     text[] NOT NULL DEFAULT '{}',
    match_value    jsonb NOT NULL DEFAULT 'null',
    condition      jsonpath,
    condition_vars jsonb,
    PRIMARY KEY (run_id, step_key, event_name)
);
CREATE INDEX waits_match ON {schema}.waits (event_name, match_path, match_value);

-- Every (event name, match path) pair any wait ever used: an incoming event
-- probes `waits_match` once per pair, so it never scans the waiting runs.
CREATE TABLE {schema}.wait_paths (
    event_name text NOT NULL,
    match_path text[] NOT NULL,
    PRIMARY KEY (event_name, match_path)
);
