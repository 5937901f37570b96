-- Operating pgdurable (sql/functions/14_operate.sql): forks, the log of
-- operators' actions, and the registry of functions and workers that the
-- CLI and the dashboard read without the app's code.

-- The run a fork was made from (app.fork); null for any other run.
ALTER TABLE {schema}.runs ADD COLUMN forked_from uuid;
-- The options a run was started with that a replay or fork of it needs
-- (flow control, cancel_on), for where the function's code is not loaded
-- (the CLI, the dashboard); null when it had none.
ALTER TABLE {schema}.runs ADD COLUMN options jsonb;
-- A fork's journal holds the steps it reuses before its first claim, which
-- must then read it (a plain new run has none, and skips the lookup).
ALTER TABLE {schema}.queue ADD COLUMN prefilled boolean NOT NULL DEFAULT false;

-- Read through the view operator_audit. Pruned with the app's audit retention.
CREATE TABLE {schema}.operator_audit_log (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    action text NOT NULL,   -- cancel, replay, fork
    run_id uuid,            -- the run acted on
    who    text NOT NULL,
    detail jsonb            -- e.g. the new run of a replay or fork, its from_step
);
CREATE INDEX operator_audit_log_at ON {schema}.operator_audit_log (at);
CREATE INDEX operator_audit_log_run ON {schema}.operator_audit_log (run_id);

-- Each function as the last worker that served it described it.
CREATE TABLE {schema}.function_registry (
    function_id   text PRIMARY KEY,
    events        text[] NOT NULL,  -- the event names that trigger it
    cron          text,
    timezone      text,
    retries       int NOT NULL,
    options       jsonb NOT NULL,   -- its other options, as JSON (see FunctionDef.describe)
    worker_id     text NOT NULL,    -- who recorded this
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Workers, while they run: each heartbeat updates its row; a clean stop
-- deletes it; a crashed worker's row is deleted by another worker's start
-- once it has not been seen for a day.
CREATE TABLE {schema}.workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          int NOT NULL,
    version      text NOT NULL,   -- of the pgdurable library
    functions    text[] NOT NULL,
    threads      int NOT NULL,
    lease        interval NOT NULL,  -- it is live while seen within one lease
    runs_held    int NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
