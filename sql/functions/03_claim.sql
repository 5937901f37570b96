-- Claiming runs and keeping their leases.

-- claim_runs: lease up to p_limit due runs of the given functions, including
-- runs whose previous worker's lease expired. A run that lost its worker more
-- often than its retry budget allows is failed instead of handed out again.
--
-- The claim commits without waiting for its WAL flush: losing it in a crash
-- only leaves the runs queued, and any journal entry written under it is
-- flushed later in the same WAL, so it makes the claim durable too. This
-- takes an fsync off the path from event to handler.
--
-- A parked run (sleeping, or waiting past its timeout) is claimed like any
-- due run; recover_claimed completes its open step first. Plain queued runs,
-- the usual case, take one UPDATE.
--
-- p_from: read only the runs due from then on (null: all). A snapshot held
-- open elsewhere (a long transaction) keeps every claimed and finished
-- run's dead index entries at the head of the due index; a claim from the
-- start walks them all, one heap visit each, so its cost grows with the
-- hold. The worker passes where its last claim left off, and reads from the
-- start now and then (see DueFloor).
CREATE FUNCTION {schema}.claim_runs(
    p_worker text, p_functions text[], p_limit int, p_lease interval,
    p_from timestamptz DEFAULT NULL
) RETURNS SETOF {schema}.claimed_run LANGUAGE plpgsql
-- The oldest due rows must come from walking the index in order and
-- stopping at p_limit. With the stale statistics of a churning queue the
-- planner may instead fetch every due row and sort them: O(backlog) per claim.
-- Every other access is by key; a sequential scan of `steps` to resolve the
-- parked runs' steps would cost O(journal) per claim.
SET enable_bitmapscan = off SET enable_sort = off SET enable_seqscan = off SET jit = off
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_picked uuid[];
    v_due timestamptz[];
    v_ids uuid[];
    v_flow uuid[];
    v_exhausted uuid[];
    v_special boolean;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT array_agg(c.run_id), array_agg(c.available_at),
           array_agg(c.run_id ORDER BY c.available_at)
               FILTER (WHERE c.flow AND NOT c.exhausted AND NOT c.holds_slots),
           array_agg(c.run_id) FILTER (WHERE c.exhausted),
           bool_or(c.status <> 'queued')
    INTO v_picked, v_due, v_flow, v_exhausted, v_special
    FROM (SELECT q.run_id, q.available_at, q.holds_slots, q.status,
                 q.slot_keys IS NOT NULL OR q.throttle IS NOT NULL AS flow,
                 -- lapsed: given up if it lost its worker too often, or was
                 -- asked to cancel (its worker can no longer honour that)
                 q.status = 'running' AND (q.handler_attempts >= q.retries OR q.cancel_requested)
                     AS exhausted
          FROM {schema}.queue q
          WHERE q.available_at <= now() AND q.available_at >= coalesce(p_from, '-infinity')
            AND q.function_id = ANY(p_functions)
            AND q.blocked_key IS NULL
            -- a live worker whose lease lapsed still holds the run in memory
            AND (q.worker_id IS NULL OR q.worker_id <> p_worker)
          ORDER BY q.available_at
          LIMIT p_limit
          FOR UPDATE SKIP LOCKED) c;
    IF v_picked IS NULL THEN
        RETURN;  -- nothing due: the usual answer to an idle poll, kept cheap
    END IF;
    v_ids := v_picked;
    IF v_flow IS NOT NULL THEN  -- concurrency= and throttle= may hold some back
        v_ids := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT unnest({schema}.admit_flow(v_flow)));
    END IF;
    IF v_special THEN  -- runs that lost their worker, or wake from a sleep or wait
        v_ids := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT unnest(v_exhausted));
        PERFORM {schema}.recover_claimed(v_picked, v_exhausted);
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE {schema}.queue q
        SET status = 'running', worker_id = p_worker, lease_token = q.lease_token + 1,
            available_at = now() + p_lease, started_at = coalesce(q.started_at, now())
        WHERE q.run_id = ANY(v_ids)
        RETURNING q.*
    )
    SELECT c.run_id, c.lease_token, c.function_id, c.attempt, c.handler_attempts,
           c.retries, c.cancel_requested,
           e.id, e.name, e.data, e.ts, e.trace,
           CASE WHEN c.event_count > 1 THEN
               (SELECT jsonb_agg(jsonb_build_object('id', m.id, 'name', m.name,
                                                    'data', m.data, 'ts', m.ts,
                                                    'trace', m.trace)
                                 ORDER BY k.ord)
                FROM {schema}.runs r,
                     unnest(r.event_ids[2:]) WITH ORDINALITY AS k(eid, ord)
                JOIN {schema}.events m ON m.id = k.eid
                WHERE r.id = c.run_id) END,
           -- started in an earlier transaction (it ran before), or a fork: it has a journal
           CASE WHEN c.started_at <> now() OR c.prefilled THEN
               (SELECT jsonb_object_agg(s.step_key, jsonb_build_object(
                           'status', s.status, 'output', s.output, 'error', s.error,
                           'attempts', s.attempts, 'position', s.position))
                FROM {schema}.steps s WHERE s.run_id = c.run_id) END,
           c.started_at <> now(), d.due_at, c.started_at, now()
    FROM claimed c
    JOIN unnest(v_picked, v_due) AS d(run_id, due_at) ON d.run_id = c.run_id
    LEFT JOIN {schema}.events e ON e.id = c.event_id
    ORDER BY d.due_at;  -- the order they are handed to executors
END
$$;

-- send_and_claim: send_events in a process that also runs a worker with
-- p_limit idle threads. Up to p_limit of the new plain runs of p_functions
-- that are due now are created leased to p_worker and returned, so they
-- start as soon as the sending transaction commits, without waiting for a
-- NOTIFY and a claim. The NOTIFY goes out only for what is left to claim.
CREATE FUNCTION {schema}.send_and_claim(
    p_events jsonb, p_specs jsonb, p_dedupe interval,
    p_worker text, p_functions text[], p_limit int, p_lease interval
) RETURNS SETOF {schema}.claimed_run LANGUAGE plpgsql AS $$
DECLARE
    v_stored record;
BEGIN
    SELECT * INTO v_stored FROM {schema}.store_events(
        p_events, p_specs, p_dedupe, p_worker, p_functions, p_limit, p_lease);
    IF v_stored.due THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_stored.claimed);
END
$$;

-- recover_claimed: before claim_runs hands out p_runs (locked), what only
-- runs that were not simply queued need. A run whose lease lapsed counts a
-- lost attempt; one that lost its worker more often than its retries allow
-- (p_exhausted) is failed with WorkerLostError instead of handed out again,
-- and one that was asked to cancel (also in p_exhausted) ends cancelled:
-- the request holds though the worker that had it died.
-- A parked run (sleeping, or waiting past its timeout) has its open step
-- completed: a sleep keeps its wake-up time as output (for the timeline), a
-- wait that timed out gets null, and the wait's filters go.
CREATE FUNCTION {schema}.recover_claimed(p_runs uuid[], p_exhausted uuid[])
RETURNS void LANGUAGE plpgsql
SET enable_seqscan = off SET jit = off AS $$
DECLARE
    v_parked uuid[];
BEGIN
    SELECT array_agg(q.run_id) FILTER (WHERE q.status IN ('sleeping', 'waiting'))
    INTO v_parked FROM {schema}.queue q WHERE q.run_id = ANY(p_runs);
    UPDATE {schema}.queue q SET handler_attempts = q.handler_attempts + 1
    WHERE q.run_id = ANY(p_runs) AND q.status = 'running'
      AND NOT q.run_id = ANY(coalesce(p_exhausted, '{}'));
    IF p_exhausted IS NOT NULL THEN
        PERFORM {schema}.release_slots(p_exhausted);
        WITH dead AS (
            DELETE FROM {schema}.queue q WHERE q.run_id = ANY(p_exhausted) RETURNING q.*
        )
        INSERT INTO {schema}.results (run_id, status, error, attempt, worker_id, started_at)
        SELECT d.run_id, CASE WHEN d.cancel_requested THEN 'cancelled' ELSE 'failed' END,
               CASE WHEN d.cancel_requested THEN d.cancel_reason ELSE jsonb_build_object(
                   'type', 'WorkerLostError',
                   'message', format('the worker running this run stopped responding %s times',
                                     d.handler_attempts + 1),
                   'traceback', null) END,
               d.attempt, d.worker_id, d.started_at
        FROM dead d;
    END IF;
    IF v_parked IS NOT NULL THEN
        UPDATE {schema}.steps s
        SET status = 'completed', finished_at = now(),
            output = CASE WHEN s.status = 'waiting' THEN NULL ELSE s.output END
        WHERE s.run_id = ANY(v_parked) AND s.status IN ('sleeping', 'waiting');
        DELETE FROM {schema}.waits w WHERE w.run_id = ANY(v_parked) AND NOT w.cancel;
    END IF;
END
$$;

-- heartbeat: extend the leases a live worker holds; returns the runs among
-- them that someone asked to cancel ('cancel') and those it no longer
-- holds ('lost': it was cut off past their lease, and another worker took
-- them over), whose handlers must stop. Like a claim, it need not wait for its
-- WAL flush: a lost extension only lets the lease expire sooner. A row
-- locked by someone else is skipped, not waited for: that is the journal
-- writer finishing or requeueing the run, or a cancel, and waiting could
-- deadlock with either.
CREATE FUNCTION {schema}.heartbeat(
    p_runs uuid[], p_tokens bigint[], p_lease interval
) RETURNS TABLE (held_run uuid, why text) LANGUAGE plpgsql
-- Every access is by key, in sets: index scans and hash joins are right
-- whatever the (often stale) statistics of the churning queue say.
SET enable_seqscan = off SET enable_nestloop = off SET jit = off AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH held AS MATERIALIZED (
        SELECT q.run_id FROM {schema}.queue q
        JOIN unnest(p_runs, p_tokens) AS h(run_id, token)
          ON q.run_id = h.run_id AND q.lease_token = h.token
        WHERE q.run_id = ANY(p_runs) AND q.status = 'running'
        -- NO KEY UPDATE, not UPDATE: a transactional step holds its run's row
        -- with KEY SHARE (hold_run) and its lease must go on being extended.
        FOR NO KEY UPDATE OF q SKIP LOCKED
    ), extended AS (
        UPDATE {schema}.queue q SET available_at = now() + p_lease
        FROM held WHERE q.run_id = ANY(ARRAY(SELECT run_id FROM held)) AND q.run_id = held.run_id
        RETURNING q.run_id, q.cancel_requested
    )
    SELECT x.run_id, 'cancel' FROM extended x WHERE x.cancel_requested
    UNION ALL  -- no longer this claim's: another worker took it over
    SELECT h.run_id, 'lost' FROM unnest(p_runs, p_tokens) AS h(run_id, token)
    WHERE NOT EXISTS (SELECT FROM {schema}.queue q WHERE q.run_id = h.run_id
                      AND q.lease_token = h.token AND q.status = 'running');
END
$$;

-- next_due: when the next parked or scheduled run of these functions comes
-- due (null if none), so an idle worker wakes for it on time.
CREATE FUNCTION {schema}.next_due(p_functions text[]) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT q.available_at FROM {schema}.queue q
    WHERE q.available_at > now() AND q.available_at < 'infinity' AND q.blocked_key IS NULL
      AND q.status <> 'running' AND q.function_id = ANY(p_functions)
    ORDER BY q.available_at LIMIT 1;
$$;
