-- pgdurable core schema: events, runs, the step journal, and the state
-- machine's transitions as SQL functions. `{schema}` is replaced by the
-- configured (validated, quoted) schema name before this file runs.

CREATE TABLE {schema}.events (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_name_received ON {schema}.events (name, received_at DESC);

-- One row per function run. `available_at` is when the run may next be
-- claimed: its start time while queued, its lease expiry while running.
-- Only unfinished runs are in the claim index, so finished ones cost the
-- hot path nothing however many there are.
CREATE TABLE {schema}.runs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    function_id      text NOT NULL,
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN
                         ('queued', 'running', 'sleeping', 'waiting',
                          'completed', 'failed', 'cancelled', 'skipped')),
    event_ids        text[] NOT NULL,
    parent_run_id    uuid,
    retries          int NOT NULL,          -- retry budget, per step and for the handler
    attempt          int NOT NULL DEFAULT 0,  -- retries scheduled so far
    handler_attempts int NOT NULL DEFAULT 0,  -- failures outside any step, or lost workers
    available_at     timestamptz NOT NULL DEFAULT now(),
    worker_id        text,
    lease_token      bigint NOT NULL DEFAULT 0,  -- bumped by every claim; stale writers are ignored
    cancel_requested boolean NOT NULL DEFAULT false,
    output           jsonb,
    error            jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX runs_claimable ON {schema}.runs (available_at)
    WHERE status IN ('queued', 'running');
CREATE INDEX runs_event_ids ON {schema}.runs USING gin (event_ids);
CREATE INDEX runs_function_created ON {schema}.runs (function_id, created_at DESC);
CREATE INDEX runs_failed ON {schema}.runs (finished_at DESC) WHERE status = 'failed';

-- The journal: one row per step reached. `completed` and `failed` rows are
-- final and never overwritten; `retrying` rows count the attempts so far.
CREATE TABLE {schema}.steps (
    run_id      uuid NOT NULL REFERENCES {schema}.runs (id) ON DELETE CASCADE,
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

-- send_events: insert events (skipping ids seen within the dedupe window)
-- and the runs they trigger, in one statement; NOTIFY once if any run is due.
CREATE FUNCTION {schema}.send_events(
    p_ids text[], p_names text[], p_datas jsonb[], p_tss timestamptz[],
    p_run_events int[], p_run_functions text[], p_run_retries int[],
    p_dedupe interval
) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    v_due boolean;
BEGIN
    WITH input AS (
        SELECT * FROM unnest(p_ids, p_names, p_datas, p_tss)
            WITH ORDINALITY AS i(id, name, data, ts, idx)
    ), inserted AS (
        INSERT INTO {schema}.events AS e (id, name, data, ts)
        SELECT id, name, data, coalesce(ts, now()) FROM input
        ON CONFLICT (id) DO UPDATE
            SET name = excluded.name, data = excluded.data, ts = excluded.ts,
                received_at = now()
            WHERE e.received_at < now() - p_dedupe
        RETURNING e.id, e.ts
    ), runs AS (
        INSERT INTO {schema}.runs (function_id, event_ids, retries, available_at)
        SELECT r.fn, ARRAY[input.id], r.retries, greatest(inserted.ts, now())
        FROM unnest(p_run_events, p_run_functions, p_run_retries) AS r(idx, fn, retries)
        JOIN input ON input.idx = r.idx
        JOIN inserted ON inserted.id = input.id
        RETURNING available_at
    )
    SELECT coalesce(bool_or(available_at <= now()), false) INTO v_due FROM runs;
    IF v_due THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN;
END
$$;

-- claim_runs: lease up to p_limit due runs of the given functions, including
-- runs whose previous worker's lease expired. A run that lost its worker more
-- often than its retry budget allows is failed instead of handed out again.
CREATE FUNCTION {schema}.claim_runs(
    p_worker text, p_functions text[], p_limit int, p_lease interval
) RETURNS TABLE (
    id uuid, lease_token bigint, function_id text, attempt int,
    handler_attempts int, retries int, cancel_requested boolean,
    events jsonb, journal jsonb
) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH candidates AS (
        SELECT r.id, (r.status = 'running') AS lost
        FROM {schema}.runs r
        WHERE r.status IN ('queued', 'running') AND r.available_at <= now()
          AND r.function_id = ANY(p_functions)
        ORDER BY r.available_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE {schema}.runs r
        SET status = CASE WHEN c.lost AND r.handler_attempts >= r.retries
                          THEN 'failed' ELSE 'running' END,
            handler_attempts = r.handler_attempts + c.lost::int,
            worker_id = p_worker,
            lease_token = r.lease_token + 1,
            available_at = now() + p_lease,
            started_at = coalesce(r.started_at, now()),
            finished_at = CASE WHEN c.lost AND r.handler_attempts >= r.retries
                               THEN now() END,
            error = CASE WHEN c.lost AND r.handler_attempts >= r.retries
                         THEN jsonb_build_object(
                             'type', 'WorkerLostError',
                             'message', format('the worker running this run stopped responding %s times', r.handler_attempts + 1),
                             'traceback', null)
                         ELSE r.error END
        FROM candidates c
        WHERE r.id = c.id
        RETURNING r.*
    )
    SELECT c.id, c.lease_token, c.function_id, c.attempt, c.handler_attempts,
           c.retries, c.cancel_requested,
           (SELECT jsonb_agg(jsonb_build_object('id', e.id, 'name', e.name,
                                                'data', e.data, 'ts', e.ts)
                             ORDER BY k.ord)
            FROM unnest(c.event_ids) WITH ORDINALITY AS k(eid, ord)
            JOIN {schema}.events e ON e.id = k.eid),
           (SELECT jsonb_object_agg(s.step_key, jsonb_build_object(
                       'status', s.status, 'output', s.output,
                       'error', s.error, 'attempts', s.attempts))
            FROM {schema}.steps s WHERE s.run_id = c.id)
    FROM claimed c
    WHERE c.status = 'running';
END
$$;

-- flush: write a batch of journal entries and run transitions from one
-- worker in one round trip. Entries and transitions carry the lease token of
-- the claim they belong to, so a worker that lost its lease changes nothing.
-- Returns the runs, among those touched, that someone asked to cancel.
CREATE FUNCTION {schema}.flush(
    p_step_runs uuid[], p_step_tokens bigint[], p_step_keys text[],
    p_step_positions int[], p_step_statuses text[], p_step_outputs jsonb[],
    p_step_errors jsonb[], p_step_attempts int[], p_step_started timestamptz[],
    p_fin_runs uuid[], p_fin_tokens bigint[], p_fin_statuses text[],
    p_fin_outputs jsonb[], p_fin_errors jsonb[], p_fin_available timestamptz[],
    p_fin_retry boolean[], p_fin_handler_failed boolean[]
) RETURNS SETOF uuid LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.steps AS s
        (run_id, step_key, position, status, output, error, attempts, started_at)
    SELECT i.run_id, i.key, i.pos, i.status, i.output, i.error, i.attempts, i.started
    FROM unnest(p_step_runs, p_step_tokens, p_step_keys, p_step_positions,
                p_step_statuses, p_step_outputs, p_step_errors, p_step_attempts,
                p_step_started)
         AS i(run_id, token, key, pos, status, output, error, attempts, started)
    JOIN {schema}.runs r ON r.id = i.run_id AND r.lease_token = i.token
                        AND r.status = 'running'
    ON CONFLICT (run_id, step_key) DO UPDATE
        SET status = excluded.status, output = excluded.output,
            error = excluded.error, attempts = excluded.attempts,
            started_at = excluded.started_at, finished_at = now()
        WHERE s.status = 'retrying';

    UPDATE {schema}.runs r
    SET status = f.status,
        output = f.output,
        error = f.error,
        available_at = coalesce(f.available, r.available_at),
        attempt = r.attempt + f.retry::int,
        handler_attempts = r.handler_attempts + f.handler_failed::int,
        worker_id = CASE WHEN f.status = 'queued' THEN NULL ELSE r.worker_id END,
        finished_at = CASE WHEN f.status = 'queued' THEN NULL ELSE now() END
    FROM unnest(p_fin_runs, p_fin_tokens, p_fin_statuses, p_fin_outputs,
                p_fin_errors, p_fin_available, p_fin_retry, p_fin_handler_failed)
         AS f(run_id, token, status, output, error, available, retry, handler_failed)
    WHERE r.id = f.run_id AND r.lease_token = f.token AND r.status = 'running';

    IF EXISTS (SELECT 1 FROM unnest(p_fin_statuses, p_fin_available) AS f(status, available)
               WHERE f.status = 'queued' AND f.available <= now()) THEN
        PERFORM pg_notify('{channel}', '');
    END IF;

    RETURN QUERY
    SELECT r.id FROM {schema}.runs r
    WHERE r.id = ANY(p_step_runs) AND r.cancel_requested AND r.status = 'running';
END
$$;

-- heartbeat: extend the leases a live worker holds; returns the runs among
-- them that someone asked to cancel.
CREATE FUNCTION {schema}.heartbeat(
    p_runs uuid[], p_tokens bigint[], p_lease interval
) RETURNS SETOF uuid LANGUAGE sql AS $$
    WITH extended AS (
        UPDATE {schema}.runs r SET available_at = now() + p_lease
        FROM unnest(p_runs, p_tokens) AS h(run_id, token)
        WHERE r.id = h.run_id AND r.lease_token = h.token AND r.status = 'running'
        RETURNING r.id, r.cancel_requested
    )
    SELECT id FROM extended WHERE cancel_requested;
$$;

-- cancel_run: a run not yet running is cancelled at once; a running one at
-- its next step boundary. Returns the status after the call (NULL: unknown).
CREATE FUNCTION {schema}.cancel_run(p_run uuid) RETURNS text LANGUAGE sql AS $$
    UPDATE {schema}.runs r
    SET status = CASE WHEN r.status = 'running' THEN r.status ELSE 'cancelled' END,
        cancel_requested = true,
        finished_at = CASE WHEN r.status = 'running' THEN NULL ELSE now() END,
        error = CASE WHEN r.status = 'running' THEN r.error
                     ELSE jsonb_build_object('type', 'Cancelled',
                                             'message', 'cancelled by request',
                                             'traceback', null) END
    WHERE r.id = p_run AND r.status IN ('queued', 'running', 'sleeping', 'waiting')
    RETURNING r.status;
$$;

-- Monitoring views: a public interface, documented in the README.

CREATE VIEW {schema}.function_status AS
SELECT function_id, status, count(*) AS runs
FROM {schema}.runs GROUP BY function_id, status;

CREATE VIEW {schema}.queue_depth AS
SELECT function_id,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'queued' AND available_at <= now()) AS ready,
       count(*) FILTER (WHERE status = 'running') AS running,
       now() - min(available_at) FILTER (WHERE status = 'queued' AND available_at <= now())
           AS oldest_ready_age
FROM {schema}.runs
WHERE status IN ('queued', 'running')
GROUP BY function_id;

CREATE VIEW {schema}.recent_failures AS
SELECT id AS run_id, function_id, event_ids, attempt, finished_at,
       error ->> 'type' AS error_type, error ->> 'message' AS error_message,
       error ->> 'traceback' AS traceback
FROM {schema}.runs
WHERE status = 'failed'
ORDER BY finished_at DESC;

CREATE VIEW {schema}.step_timeline AS
SELECT s.run_id, r.function_id, s.position, s.step_key, s.status, s.attempts,
       s.started_at, s.finished_at, s.finished_at - s.started_at AS duration,
       s.error ->> 'type' AS error_type, s.error ->> 'message' AS error_message
FROM {schema}.steps s JOIN {schema}.runs r ON r.id = s.run_id;

CREATE VIEW {schema}.unmatched_events AS
SELECT e.id, e.name, e.received_at
FROM {schema}.events e
WHERE NOT EXISTS (SELECT 1 FROM {schema}.runs r WHERE r.event_ids @> ARRAY[e.id]);
