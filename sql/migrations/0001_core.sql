-- pgdurable core tables: events, runs, the queue, the step journal. The
-- state machine's transitions, SQL functions, are in sql/functions/.
-- `{schema}` is replaced by the configured (validated, quoted) schema name
-- before this file runs.

CREATE TABLE {schema}.events (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_name_received ON {schema}.events (name, received_at DESC);

-- A run is three rows, each written by one transition, so that no hot-path
-- write rewrites a wide row or its indexes: `runs` when it is created (never
-- updated), `queue` while it is unfinished (small, deleted when it ends),
-- and `results` when it ends (inserted once).
CREATE TABLE {schema}.runs (
    id            uuid PRIMARY KEY,
    function_id   text NOT NULL,
    event_ids     text[] NOT NULL,
    parent_run_id uuid,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_first_event ON {schema}.runs ((event_ids[1]));
CREATE INDEX runs_many_events ON {schema}.runs USING gin (event_ids)
    WHERE cardinality(event_ids) > 1;
CREATE INDEX runs_function_created ON {schema}.runs (function_id, created_at DESC);

CREATE TABLE {schema}.results (
    run_id      uuid PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('completed', 'failed', 'cancelled', 'skipped')),
    output      jsonb,
    error       jsonb,
    attempt     int NOT NULL,
    worker_id   text,                   -- the worker that finished it
    started_at  timestamptz,
    finished_at timestamptz NOT NULL DEFAULT now()
);

-- Unfinished runs only: the claimable set stays as small as the backlog,
-- however many runs have finished. `available_at` is when the row may next
-- be claimed: its start time while queued, its lease expiry while running.
CREATE TABLE {schema}.queue (
    run_id           uuid PRIMARY KEY,
    function_id      text NOT NULL,
    event_id         text NOT NULL,           -- the first event, so a claim need not read `runs`
    event_count      int NOT NULL DEFAULT 1,
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN
                         ('queued', 'running', 'sleeping', 'waiting')),
    available_at     timestamptz NOT NULL,
    retries          int NOT NULL,            -- retry budget, per step and for the handler
    attempt          int NOT NULL DEFAULT 0,  -- retries scheduled so far
    handler_attempts int NOT NULL DEFAULT 0,  -- failures outside any step, or lost workers
    lease_token      bigint NOT NULL DEFAULT 0,  -- bumped by every claim; stale writers are ignored
    worker_id        text,
    cancel_requested boolean NOT NULL DEFAULT false,
    started_at       timestamptz,
    error            jsonb                     -- the last error, while retrying
);
CREATE INDEX queue_available ON {schema}.queue (available_at);

-- The journal: one row per step reached. `completed` and `failed` rows are
-- final and never overwritten; `retrying` rows count the attempts so far.
CREATE TABLE {schema}.steps (
    run_id      uuid NOT NULL,
    step_key    text NOT NULL,
    position    int NOT NULL,
    status      text NOT NULL CHECK (status IN ('completed', 'failed', 'retrying')),
    output      jsonb,
    error       jsonb,
    attempts    int NOT NULL DEFAULT 1,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step_key)
);
