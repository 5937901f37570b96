-- pgdurable core schema: events, runs, the queue, the step journal, and the
-- state machine's transitions as SQL functions. `{schema}` is replaced by the
-- configured (validated, quoted) schema name, `{channel}` by the NOTIFY
-- channel, before this file runs.

CREATE TABLE {schema}.events (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_name_received ON {schema}.events (name, received_at DESC);

-- Run ids are UUIDv7: time-ordered, so the primary keys of runs, queue,
-- results and steps grow at their right edge instead of touching random
-- pages of indexes that hold every run ever made.
CREATE FUNCTION {schema}.uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
        substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
$$;

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

-- send_events: insert events (skipping ids seen within the dedupe window)
-- and the runs they trigger, in one statement; NOTIFY once if any run is due.
--   p_events: [[id, name, data, ts or null], ...]
--   p_runs:   [[1-based index of the event, function id, retries], ...]
CREATE FUNCTION {schema}.send_events(p_events jsonb, p_runs jsonb, p_dedupe interval)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_due boolean;
BEGIN
    WITH input AS (
        SELECT x.e ->> 0 AS id, x.e ->> 1 AS name, x.e -> 2 AS data,
               (x.e ->> 3)::timestamptz AS ts, x.idx
        FROM jsonb_array_elements(p_events) WITH ORDINALITY AS x(e, idx)
    ), inserted AS (
        INSERT INTO {schema}.events AS e (id, name, data, ts)
        SELECT id, name, data, coalesce(ts, now()) FROM input
        ON CONFLICT (id) DO UPDATE
            SET name = excluded.name, data = excluded.data, ts = excluded.ts,
                received_at = now()
            WHERE e.received_at < now() - p_dedupe
        RETURNING e.id, e.ts
    ), planned AS MATERIALIZED (
        SELECT {schema}.uuid_v7() AS id, r ->> 1 AS fn, (r ->> 2)::int AS retries,
               inserted.id AS event_id, greatest(inserted.ts, now()) AS available_at
        FROM jsonb_array_elements(p_runs) AS r
        JOIN input ON input.idx = (r ->> 0)::int
        JOIN inserted ON inserted.id = input.id
    ), new_runs AS (
        INSERT INTO {schema}.runs (id, function_id, event_ids)
        SELECT id, fn, ARRAY[event_id] FROM planned
    ), queued AS (
        INSERT INTO {schema}.queue (run_id, function_id, event_id, available_at, retries)
        SELECT id, fn, event_id, available_at, retries FROM planned
        RETURNING available_at
    )
    SELECT coalesce(bool_or(available_at <= now()), false) INTO v_due FROM queued;
    IF v_due THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
END
$$;

-- claim_runs: lease up to p_limit due runs of the given functions, including
-- runs whose previous worker's lease expired. A run that lost its worker more
-- often than its retry budget allows is failed instead of handed out again.
-- The first event comes as columns; any more (batches) as JSON. The journal
-- is read only for runs that ran before.
--
-- The claim commits without waiting for its WAL flush: losing it in a crash
-- only leaves the runs queued, and any journal entry written under it is
-- flushed later in the same WAL, so it makes the claim durable too. This
-- takes an fsync off the path from event to handler.
CREATE FUNCTION {schema}.claim_runs(
    p_worker text, p_functions text[], p_limit int, p_lease interval
) RETURNS TABLE (
    id uuid, lease_token bigint, function_id text, attempt int,
    handler_attempts int, retries int, cancel_requested boolean,
    event_id text, event_name text, event_data jsonb, event_ts timestamptz,
    more_events jsonb, journal jsonb
) LANGUAGE plpgsql
-- The oldest due rows must come from walking the index in order and
-- stopping at p_limit. With the stale statistics of a churning queue the
-- planner may instead fetch every due row and sort them: O(backlog) per claim.
SET enable_bitmapscan = off SET enable_sort = off AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH candidates AS MATERIALIZED (
        SELECT q.run_id, q.status = 'running' AS lost, q.started_at IS NOT NULL AS resumed,
               q.status = 'running' AND q.handler_attempts >= q.retries AS exhausted
        FROM {schema}.queue q
        WHERE q.available_at <= now() AND q.function_id = ANY(p_functions)
          -- a live worker whose lease lapsed still holds the run in memory
          AND (q.worker_id IS NULL OR q.worker_id <> p_worker)
        ORDER BY q.available_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE {schema}.queue q
        SET status = 'running',
            handler_attempts = q.handler_attempts + c.lost::int,
            worker_id = p_worker,
            lease_token = q.lease_token + 1,
            available_at = now() + p_lease,
            started_at = coalesce(q.started_at, now())
        FROM candidates c
        WHERE q.run_id = ANY(ARRAY(SELECT run_id FROM candidates WHERE NOT exhausted))
          AND q.run_id = c.run_id
        RETURNING q.*, c.resumed
    ), dead AS (
        DELETE FROM {schema}.queue q
        WHERE q.run_id = ANY(ARRAY(SELECT run_id FROM candidates WHERE exhausted))
        RETURNING q.*
    ), failed AS (
        INSERT INTO {schema}.results (run_id, status, error, attempt, worker_id, started_at)
        SELECT d.run_id, 'failed', jsonb_build_object(
                   'type', 'WorkerLostError',
                   'message', format('the worker running this run stopped responding %s times',
                                     d.handler_attempts + 1),
                   'traceback', null),
               d.attempt, d.worker_id, d.started_at
        FROM dead d
    )
    SELECT c.run_id, c.lease_token, c.function_id, c.attempt, c.handler_attempts,
           c.retries, c.cancel_requested,
           e.id, e.name, e.data, e.ts,
           CASE WHEN c.event_count > 1 THEN
               (SELECT jsonb_agg(jsonb_build_object('id', m.id, 'name', m.name,
                                                    'data', m.data, 'ts', m.ts)
                                 ORDER BY k.ord)
                FROM {schema}.runs r,
                     unnest(r.event_ids[2:]) WITH ORDINALITY AS k(eid, ord)
                JOIN {schema}.events m ON m.id = k.eid
                WHERE r.id = c.run_id) END,
           CASE WHEN c.resumed THEN
               (SELECT jsonb_object_agg(s.step_key, jsonb_build_object(
                           'status', s.status, 'output', s.output,
                           'error', s.error, 'attempts', s.attempts))
                FROM {schema}.steps s WHERE s.run_id = c.run_id) END
    FROM claimed c
    LEFT JOIN {schema}.events e ON e.id = c.event_id;
END
$$;

-- flush: write a batch of journal entries and run transitions from one
-- worker in one round trip. Both carry the lease token of the claim they
-- belong to, so a worker that lost its lease changes nothing. A finished run
-- leaves the queue; a retried or released one goes back to 'queued'.
-- Returns the runs, among those journaled, that someone asked to cancel.
--
-- Batches come as JSON arrays of arrays (one document each: far cheaper to
-- send from Python than a dozen typed arrays):
--   p_steps:    [run_id, token, key, position, status, output, error, attempts, started_at]
--   p_finishes: [run_id, token, status, output, error, available_at, retry, handler_failed]
CREATE FUNCTION {schema}.flush(p_steps jsonb, p_finishes jsonb) RETURNS SETOF uuid
LANGUAGE plpgsql
-- Every access is by key, in sets: index scans and hash joins are right
-- whatever the (often stale) statistics of the churning queue say.
SET enable_seqscan = off SET enable_nestloop = off AS $$
DECLARE
    v_step_runs uuid[] := ARRAY(SELECT (e ->> 0)::uuid FROM jsonb_array_elements(p_steps) e);
    v_fin_runs uuid[] := ARRAY(SELECT (e ->> 0)::uuid FROM jsonb_array_elements(p_finishes) e);
    v_due boolean;
    v_cancelled uuid[];
BEGIN
    IF cardinality(v_step_runs) > 0 THEN
        -- One pass over the queue both checks the leases and reads the
        -- cancel requests that the next steps of these runs must honour.
        WITH valid AS MATERIALIZED (
            SELECT q.run_id, q.lease_token, q.cancel_requested FROM {schema}.queue q
            WHERE q.run_id = ANY(v_step_runs) AND q.status = 'running'
        ), journaled AS (
            INSERT INTO {schema}.steps AS s
                (run_id, step_key, position, status, output, error, attempts, started_at)
            SELECT i.run_id, i.key, i.pos, i.status, i.output, i.error, i.attempts, i.started
            FROM (SELECT (e ->> 0)::uuid AS run_id, (e ->> 1)::bigint AS token, e ->> 2 AS key,
                         (e ->> 3)::int AS pos, e ->> 4 AS status, e -> 5 AS output,
                         nullif(e -> 6, 'null') AS error, (e ->> 7)::int AS attempts,
                         (e ->> 8)::timestamptz AS started
                  FROM jsonb_array_elements(p_steps) e) i
            JOIN valid v ON v.run_id = i.run_id AND v.lease_token = i.token
            ON CONFLICT (run_id, step_key) DO UPDATE
                SET status = excluded.status, output = excluded.output,
                    error = excluded.error, attempts = excluded.attempts,
                    started_at = excluded.started_at, finished_at = now()
                WHERE s.status = 'retrying'
        )
        SELECT array_agg(run_id) INTO v_cancelled FROM valid WHERE cancel_requested;
    END IF;

    IF cardinality(v_fin_runs) > 0 THEN
        WITH fin AS MATERIALIZED (
            SELECT (e ->> 0)::uuid AS run_id, (e ->> 1)::bigint AS token, e ->> 2 AS status,
                   e -> 3 AS output, nullif(e -> 4, 'null') AS error,
                   (e ->> 5)::timestamptz AS available, (e ->> 6)::boolean AS retry,
                   (e ->> 7)::boolean AS handler_failed
            FROM jsonb_array_elements(p_finishes) e
        ), done AS (
            DELETE FROM {schema}.queue q USING fin f
            WHERE q.run_id = ANY(v_fin_runs) AND q.run_id = f.run_id
              AND q.lease_token = f.token AND q.status = 'running' AND f.status <> 'queued'
            RETURNING q.run_id, q.attempt, q.started_at, q.worker_id, f.status, f.output, f.error
        ), finished AS (
            INSERT INTO {schema}.results
                (run_id, status, output, error, attempt, worker_id, started_at)
            SELECT run_id, status, output, error, attempt, worker_id, started_at FROM done
        ), requeued AS (
            UPDATE {schema}.queue q
            SET status = 'queued', available_at = f.available, worker_id = NULL,
                attempt = q.attempt + f.retry::int,
                handler_attempts = q.handler_attempts + f.handler_failed::int,
                error = coalesce(f.error, q.error)
            FROM fin f
            WHERE q.run_id = ANY(v_fin_runs) AND q.run_id = f.run_id
              AND q.lease_token = f.token AND q.status = 'running' AND f.status = 'queued'
            RETURNING q.available_at
        )
        SELECT coalesce(bool_or(available_at <= now()), false) INTO v_due FROM requeued;
        IF v_due THEN
            PERFORM pg_notify('{channel}', '');
        END IF;
    END IF;

    RETURN QUERY SELECT unnest(v_cancelled);
END
$$;

-- heartbeat: extend the leases a live worker holds; returns the runs among
-- them that someone asked to cancel. Like a claim, it need not wait for its
-- WAL flush: a lost extension only lets the lease expire sooner.
CREATE FUNCTION {schema}.heartbeat(
    p_runs uuid[], p_tokens bigint[], p_lease interval
) RETURNS SETOF uuid LANGUAGE plpgsql
-- Every access is by key, in sets: index scans and hash joins are right
-- whatever the (often stale) statistics of the churning queue say.
SET enable_seqscan = off SET enable_nestloop = off AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH extended AS (
        UPDATE {schema}.queue q SET available_at = now() + p_lease
        FROM unnest(p_runs, p_tokens) AS h(run_id, token)
        WHERE q.run_id = ANY(p_runs) AND q.run_id = h.run_id AND q.lease_token = h.token
          AND q.status = 'running'
        RETURNING q.run_id, q.cancel_requested
    )
    SELECT x.run_id FROM extended x WHERE x.cancel_requested;
END
$$;

-- cancel_run: a run not running is cancelled at once; a running one at its
-- next step boundary. Returns true if the run was cancelled or will be.
CREATE FUNCTION {schema}.cancel_run(p_run uuid) RETURNS boolean LANGUAGE sql AS $$
    WITH flagged AS (
        UPDATE {schema}.queue SET cancel_requested = true
        WHERE run_id = p_run AND status = 'running'
        RETURNING run_id
    ), removed AS (
        DELETE FROM {schema}.queue WHERE run_id = p_run AND status <> 'running'
        RETURNING run_id, attempt, started_at
    ), cancelled AS (
        INSERT INTO {schema}.results (run_id, status, attempt, started_at, error)
        SELECT run_id, 'cancelled', attempt, started_at,
               jsonb_build_object('type', 'Cancelled', 'message', 'cancelled by request',
                                  'traceback', null)
        FROM removed
        RETURNING run_id
    )
    SELECT EXISTS (SELECT FROM flagged) OR EXISTS (SELECT FROM cancelled);
$$;

-- A run as the management API and the views see it: live state from the
-- queue while unfinished, the permanent record otherwise.
CREATE VIEW {schema}.run_state AS
SELECT r.id, r.function_id, coalesce(res.status, q.status, 'queued') AS status, res.output,
       coalesce(res.error, q.error) AS error, coalesce(res.attempt, q.attempt, 0) AS attempt,
       r.event_ids, r.parent_run_id, r.created_at,
       coalesce(res.started_at, q.started_at) AS started_at, res.finished_at,
       res.worker_id
FROM {schema}.runs r
LEFT JOIN {schema}.queue q ON q.run_id = r.id
LEFT JOIN {schema}.results res ON res.run_id = r.id;

-- Monitoring views: a public interface, documented in the README.

CREATE VIEW {schema}.function_status AS
SELECT function_id, status, count(*) AS runs
FROM {schema}.run_state GROUP BY function_id, status;

CREATE VIEW {schema}.queue_depth AS
SELECT function_id,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'queued' AND available_at <= now()) AS ready,
       count(*) FILTER (WHERE status = 'running') AS running,
       now() - min(available_at) FILTER (WHERE status = 'queued' AND available_at <= now())
           AS oldest_ready_age
FROM {schema}.queue
GROUP BY function_id;

CREATE VIEW {schema}.recent_failures AS
SELECT res.run_id, r.function_id, r.event_ids, res.attempt, res.finished_at,
       res.error ->> 'type' AS error_type, res.error ->> 'message' AS error_message,
       res.error ->> 'traceback' AS traceback
FROM {schema}.results res JOIN {schema}.runs r ON r.id = res.run_id
WHERE res.status = 'failed'
ORDER BY res.finished_at DESC;

CREATE VIEW {schema}.step_timeline AS
SELECT s.run_id, r.function_id, s.position, s.step_key, s.status, s.attempts,
       s.started_at, s.finished_at, s.finished_at - s.started_at AS duration,
       s.error ->> 'type' AS error_type, s.error ->> 'message' AS error_message
FROM {schema}.steps s JOIN {schema}.runs r ON r.id = s.run_id;

CREATE VIEW {schema}.unmatched_events AS
SELECT e.id, e.name, e.received_at
FROM {schema}.events e
WHERE NOT EXISTS (SELECT FROM {schema}.runs r
                  WHERE r.event_ids[1] = e.id OR (cardinality(r.event_ids) > 1
                                                  AND r.event_ids @> ARRAY[e.id]));
