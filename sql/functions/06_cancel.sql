-- Cancelling runs.

-- cancel_set: cancel runs; one not running is cancelled at once (its waits
-- go with it), a running one at its next step boundary. Returns how many
-- runs were cancelled or will be.
CREATE FUNCTION {schema}.cancel_set(p_runs uuid[]) RETURNS int LANGUAGE sql AS $$
    WITH locked AS MATERIALIZED (  -- in run order, as flush locks them
        SELECT run_id FROM {schema}.queue WHERE run_id = ANY(p_runs) ORDER BY run_id FOR UPDATE
    ), flagged AS (
        UPDATE {schema}.queue SET cancel_requested = true
        WHERE run_id IN (SELECT run_id FROM locked) AND status = 'running'
        RETURNING run_id
    ), removed AS (
        DELETE FROM {schema}.queue WHERE run_id IN (SELECT run_id FROM locked) AND status <> 'running'
        RETURNING run_id, attempt, started_at
    ), unwaited AS (
        DELETE FROM {schema}.waits WHERE run_id IN (SELECT run_id FROM removed)
    ), cancelled AS (
        INSERT INTO {schema}.results (run_id, status, attempt, started_at, error)
        SELECT run_id, 'cancelled', attempt, started_at,
               jsonb_build_object('type', 'Cancelled', 'message', 'cancelled by request',
                                  'traceback', null)
        FROM removed
        RETURNING run_id
    )
    SELECT ((SELECT count(*) FROM flagged) + (SELECT count(*) FROM cancelled))::int;
$$;

-- cancel_run: cancel one run; true if it was cancelled or will be.
CREATE FUNCTION {schema}.cancel_run(p_run uuid) RETURNS boolean LANGUAGE sql AS $$
    SELECT {schema}.cancel_set(ARRAY[p_run]) > 0;
$$;

-- cancel_runs: cancel the unfinished runs of a function created in
-- [p_from, p_to).
CREATE FUNCTION {schema}.cancel_runs(p_function text, p_from timestamptz, p_to timestamptz)
RETURNS int LANGUAGE sql AS $$
    SELECT {schema}.cancel_set(ARRAY(
        SELECT q.run_id FROM {schema}.queue q JOIN {schema}.runs r ON r.id = q.run_id
        WHERE q.function_id = p_function AND r.created_at >= p_from AND r.created_at < p_to));
$$;
