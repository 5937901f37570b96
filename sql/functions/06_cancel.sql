-- Cancelling runs.

-- cancel_set: cancel runs; one not running is cancelled at once, a running
-- one at its next step boundary (its worker is told by a NOTIFY, and its
-- next transition ends it `cancelled` whatever it reports: see flush). `p_reasons` (one error document per run,
-- or null) says why. Returns how many runs were cancelled or will be.
--
-- The rows are locked by a statement of their own: one being claimed at
-- that moment is waited for, and only a later statement's snapshot sees it
-- `running` (in one statement, the update and delete below would both see
-- it `queued` and then skip it as changed: the cancel would be lost).
CREATE FUNCTION {schema}.cancel_set(p_runs uuid[], p_reasons jsonb[] DEFAULT NULL)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_count int;
BEGIN
    PERFORM FROM {schema}.queue q  -- in run order, as flush locks them
    WHERE q.run_id = ANY(p_runs) ORDER BY q.run_id FOR UPDATE;
    PERFORM {schema}.release_slots(ARRAY(  -- woken runs pass on the slot handed to them
        SELECT q.run_id FROM {schema}.queue q
        WHERE q.run_id = ANY(p_runs) AND q.status <> 'running' AND q.reserved_key IS NOT NULL));

    WITH asked AS (
        SELECT DISTINCT ON (a.run_id) a.run_id, coalesce(a.reason, jsonb_build_object(
                   'type', 'Cancelled', 'message', 'cancelled by request', 'traceback', null))
                   AS reason
        FROM unnest(p_runs, p_reasons) AS a(run_id, reason)
        WHERE a.run_id IS NOT NULL
    ), flagged AS (
        UPDATE {schema}.queue q SET cancel_requested = true, cancel_reason = a.reason
        FROM asked a
        WHERE q.run_id = ANY(p_runs) AND q.run_id = a.run_id AND q.status = 'running'
        RETURNING q.run_id
    ), told AS (  -- the workers holding them learn it at once (see Worker._listen_loop)
        SELECT pg_notify('{channel}', 'cancel ' || run_id) FROM flagged
    ), removed AS (
        DELETE FROM {schema}.queue q USING asked a
        WHERE q.run_id = ANY(p_runs) AND q.run_id = a.run_id AND q.status <> 'running'
        RETURNING q.run_id, q.attempt, q.started_at, a.reason
    ), cancelled AS (
        INSERT INTO {schema}.results (run_id, status, attempt, started_at, error)
        SELECT run_id, 'cancelled', attempt, started_at, reason FROM removed
        RETURNING run_id
    )
    SELECT (SELECT count(*) FROM told) + (SELECT count(*) FROM cancelled) INTO v_count;
    RETURN v_count;
END
$$;

-- cancel_run: cancel one run; true if it was cancelled or will be.
CREATE FUNCTION {schema}.cancel_run(p_run uuid) RETURNS boolean LANGUAGE sql AS $$
    SELECT {schema}.cancel_set(ARRAY[p_run]) > 0;
$$;

-- cancel_runs: cancel the unfinished runs of p_function created in
-- [p_from, p_to), or (p_function null) those among p_runs, logging each
-- in operator_audit as done by p_who.
CREATE FUNCTION {schema}.cancel_runs(
    p_function text, p_from timestamptz, p_to timestamptz, p_runs uuid[], p_who text
) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_runs uuid[];
BEGIN
    IF p_function IS NULL THEN
        v_runs := ARRAY(SELECT q.run_id FROM {schema}.queue q WHERE q.run_id = ANY(p_runs));
    ELSE
        v_runs := ARRAY(
            SELECT q.run_id FROM {schema}.queue q JOIN {schema}.runs r ON r.id = q.run_id
            WHERE q.function_id = p_function AND r.created_at >= p_from AND r.created_at < p_to);
    END IF;
    PERFORM {schema}.audit('cancel', v_runs, p_who, NULL);
    RETURN {schema}.cancel_set(v_runs);
END
$$;
