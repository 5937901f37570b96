-- Parked runs: waits for events and child runs, and their wake-ups.

-- wake: complete waiting steps with the given outputs and queue their runs.
-- A step is woken at most once: the first caller deletes its wait rows,
-- later ones find none. The queue rows are locked first, in run order, as
-- the claim locks them, so a wake racing a timeout cannot deadlock with it.
-- Returns how many runs became due.
CREATE FUNCTION {schema}.wake(p_runs uuid[], p_keys text[], p_outputs jsonb[])
RETURNS int LANGUAGE plpgsql
-- By key, in sets, whatever the stale statistics of the churning tables say.
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
    v_woken int;
BEGIN
    PERFORM FROM {schema}.queue q
    WHERE q.run_id = ANY(p_runs) AND q.status = 'waiting'
    ORDER BY q.run_id FOR UPDATE;

    WITH wakes AS (
        SELECT DISTINCT ON (m.run_id, m.step_key) m.run_id, m.step_key, m.output
        FROM unnest(p_runs, p_keys, p_outputs) AS m(run_id, step_key, output)
        ORDER BY m.run_id, m.step_key
    ), gone AS (
        DELETE FROM {schema}.waits w USING wakes m
        WHERE w.run_id = m.run_id AND w.step_key = m.step_key
        RETURNING w.run_id, w.step_key, m.output
    ), journaled AS (
        UPDATE {schema}.steps s
        SET status = 'completed', output = g.output, event_id = g.output ->> 'id', finished_at = now()
        FROM (SELECT DISTINCT ON (run_id, step_key) * FROM gone) g
        WHERE s.run_id = g.run_id AND s.step_key = g.step_key AND s.status = 'waiting'
        RETURNING s.run_id
    ), queued AS (
        UPDATE {schema}.queue q SET status = 'queued', available_at = now()
        WHERE q.run_id = ANY(ARRAY(SELECT run_id FROM journaled)) AND q.status = 'waiting'
        RETURNING q.run_id
    )
    SELECT count(*) INTO v_woken FROM queued;
    RETURN v_woken;
END
$$;

-- register_wait: the step p_key of a running run starts waiting for one of
-- the events p_names. Under the exclusive lock of each name (senders hold it
-- shared until they commit), it first looks for a matching event received
-- since the step before this one started, in whichever attempt first began
-- it (or since the run started), that
-- no earlier wait of the run consumed: an event sent while the run was
-- getting here is not missed, and two waits in a row take two events. All
-- these times are the database's: `received_at` is when the send statement
-- ran, and a step's `started_at` the worker's reading of the database's
-- clock as it began (a wait's own: the start of the window it looked in,
-- so that the next wait looks back as far). If one is found,
-- the step completes with it at once and the run goes on; otherwise the run
-- parks as `waiting` until an event wakes it or `p_expires` (the timeout;
-- null for none) passes. Returns (state, event): state is 'matched',
-- 'parked', 'lost' when the caller no longer holds the run's lease, or
-- 'cancelled' when the run was asked to cancel (it must not park).
CREATE FUNCTION {schema}.register_wait(
    p_run uuid, p_token bigint, p_key text, p_position int, p_names text[],
    p_match_path text[], p_match_value jsonb, p_condition jsonpath, p_vars jsonb,
    p_expires timestamptz
) RETURNS TABLE (state text, event jsonb) LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz;
    v_cancel boolean;
    v_since timestamptz;
    v_event jsonb;
BEGIN
    -- A sender's transaction left open must not hold this worker forever.
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM pg_advisory_xact_lock(k)
    FROM (SELECT DISTINCT {schema}.event_lock_key(n) AS k FROM unnest(p_names) AS n ORDER BY 1) AS keys;

    SELECT q.started_at, q.cancel_requested INTO v_started, v_cancel FROM {schema}.queue q
    WHERE q.run_id = p_run AND q.lease_token = p_token AND q.status = 'running'
    FOR UPDATE;
    IF NOT FOUND OR v_cancel THEN
        RETURN QUERY SELECT CASE WHEN v_cancel THEN 'cancelled' ELSE 'lost' END, NULL::jsonb;
        RETURN;
    END IF;
    -- The step before may have begun in an earlier attempt that a crash cut
    -- short, its sends stored then (and only deduplicated when it ran again):
    -- so the window opens when it could first begin, once the entry before
    -- it was written (or the run was first claimed), if that is earlier.
    SELECT least(s.started_at, coalesce(
               (SELECT p.finished_at FROM {schema}.steps p
                WHERE p.run_id = p_run AND p.position < s.position AND p.step_key <> p_key
                ORDER BY p.position DESC LIMIT 1), v_started))
    INTO v_since FROM {schema}.steps s
    WHERE s.run_id = p_run AND s.step_key <> p_key ORDER BY s.position DESC LIMIT 1;
    v_since := coalesce(v_since, v_started);

    SELECT {schema}.event_doc(e) INTO v_event
    FROM {schema}.events e
    WHERE e.name = ANY(p_names) AND e.received_at >= v_since
      AND NOT EXISTS (SELECT FROM {schema}.steps c WHERE c.run_id = p_run AND c.event_id = e.id)
      AND (p_match_path = '{}' OR {schema}.event_doc(e) #> p_match_path = p_match_value)
      AND (p_condition IS NULL
           OR jsonb_path_match({schema}.event_doc(e), p_condition, p_vars, true) IS TRUE)
    ORDER BY e.received_at, e.id
    LIMIT 1;

    INSERT INTO {schema}.steps AS s
        (run_id, step_key, position, status, output, event_id, started_at)
    VALUES (p_run, p_key, p_position, CASE WHEN v_event IS NULL THEN 'waiting' ELSE 'completed' END,
            v_event, v_event ->> 'id', v_since)
    ON CONFLICT (run_id, step_key) DO UPDATE
        SET status = excluded.status, output = excluded.output, event_id = excluded.event_id,
            finished_at = now()
        WHERE s.status IN ('retrying', 'waiting');
    IF v_event IS NOT NULL THEN
        RETURN QUERY SELECT 'matched', v_event;
        RETURN;
    END IF;

    PERFORM {schema}.release_slots(ARRAY[p_run]);  -- a parked run holds no slot
    INSERT INTO {schema}.waits (run_id, step_key, event_name, match_path, match_value,
                                condition, condition_vars)
    SELECT p_run, p_key, n, p_match_path, p_match_value, p_condition, p_vars
    FROM unnest(p_names) AS n
    ON CONFLICT DO NOTHING;
    INSERT INTO {schema}.wait_paths (event_name, match_path)
    SELECT n, p_match_path FROM unnest(p_names) AS n
    ON CONFLICT DO NOTHING;
    UPDATE {schema}.queue
    SET status = 'waiting', available_at = coalesce(p_expires, 'infinity'), worker_id = NULL
    WHERE run_id = p_run;
    RETURN QUERY SELECT 'parked', NULL::jsonb;
END
$$;

-- invoke_child: the step p_key of a running run starts a child run of
-- p_function (with the options p_options, as start_run takes them) with
-- the event ('pgdurable/invoked', p_data) and parks until the child ends or
-- p_expires passes. The child's event gets a fresh id, so no event sent
-- before can stand in for it. The child cannot end before this commits, so
-- no lock is needed against the wake. p_trace is the parent's span context
-- (when traced), stored with the child's event for its run to link to.
-- Returns 'started', 'lost' if the caller no longer holds the run's lease,
-- or 'cancelled' if the run was asked to cancel (then no child starts).
CREATE FUNCTION {schema}.invoke_child(
    p_run uuid, p_token bigint, p_key text, p_position int, p_function text, p_retries int,
    p_data jsonb, p_expires timestamptz, p_options jsonb, p_trace jsonb DEFAULT NULL
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_cancel boolean;
    v_event text := {schema}.uuid_v7()::text;
    v_child uuid;
BEGIN
    SELECT q.cancel_requested INTO v_cancel FROM {schema}.queue q
    WHERE q.run_id = p_run AND q.lease_token = p_token AND q.status = 'running'
    FOR UPDATE;
    IF NOT FOUND OR v_cancel THEN
        RETURN CASE WHEN v_cancel THEN 'cancelled' ELSE 'lost' END;
    END IF;
    PERFORM {schema}.release_slots(ARRAY[p_run]);  -- a parked run holds no slot
    INSERT INTO {schema}.events (id, name, data, ts, trace)
    VALUES (v_event, 'pgdurable/invoked', p_data, now(), p_trace);
    v_child := {schema}.start_run(p_function, ARRAY[v_event], p_retries, p_run, p_options);

    INSERT INTO {schema}.steps (run_id, step_key, position, status, started_at)
    VALUES (p_run, p_key, p_position, 'waiting', now())
    ON CONFLICT (run_id, step_key) DO UPDATE SET status = 'waiting', finished_at = now();
    INSERT INTO {schema}.waits (run_id, step_key, event_name, match_path, match_value)
    VALUES (p_run, p_key, 'pgdurable/run.finished', '{data,run_id}', to_jsonb(v_child::text));
    UPDATE {schema}.queue
    SET status = 'waiting', available_at = coalesce(p_expires, 'infinity'), worker_id = NULL
    WHERE run_id = p_run;
    PERFORM pg_notify('{channel}', '');
    RETURN 'started';
END
$$;
