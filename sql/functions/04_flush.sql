-- Writing the journal and run transitions.

-- flush: write a batch of journal entries and run transitions from one
-- worker in one round trip. Both carry the lease token of the claim they
-- belong to, so a worker that lost its lease changes nothing. A finished run
-- leaves the queue; a retried or released one goes back to 'queued', a
-- sleeping one to 'sleeping' (its journal entry says until when). A run
-- that was asked to cancel ends `cancelled` whatever transition it reports:
-- a cancel that returned true is never undone by the run's own next move.
-- p_probes are runs about to start a step that only ask whether they were
-- asked to cancel, and whether they are still theirs (see RunState.boundary),
-- with the lease tokens of their claims in p_probe_tokens.
-- Returns the runs, among those journaled or probed, that someone asked to
-- cancel; the runs journaled whose lease this worker no longer holds (it
-- was cut off past it, and another worker took them over): their handlers
-- must stop; and the database's clock.
--
-- Batches come as JSON arrays of arrays (one document each: far cheaper to
-- send from Python than a dozen typed arrays; positional, as naming the
-- fields would double the cost of a row, 2.9 us more per journal entry:
-- bench/named_or_positional.py):
--   p_steps:    [run_id, token, key, position, status, output, error, attempts, started_at]
--   p_finishes: [run_id, token, status, output, error, available_at, retry, handler_failed]
CREATE FUNCTION {schema}.flush(p_steps jsonb, p_finishes jsonb, p_probes uuid[],
                               p_probe_tokens bigint[])
RETURNS TABLE (cancelled uuid[], lost uuid[], at timestamptz)
LANGUAGE plpgsql
-- Every access is by key, in sets: index scans and hash joins are right
-- whatever the (often stale) statistics of the churning queue say.
SET enable_seqscan = off SET enable_nestloop = off SET jit = off AS $$
DECLARE
    v_step_runs uuid[] := ARRAY(SELECT (e ->> 0)::uuid FROM jsonb_array_elements(p_steps) e);
    v_fin_runs uuid[] := ARRAY(SELECT (e ->> 0)::uuid FROM jsonb_array_elements(p_finishes) e);
    v_due boolean;
    v_cancelled uuid[];
    v_holders uuid[];
    v_lost uuid[];
BEGIN
    IF cardinality(p_probes) > 0 THEN
        SELECT array_agg(p.run_id) FILTER (WHERE q.cancel_requested),
               array_agg(p.run_id) FILTER (WHERE q.run_id IS NULL)
        INTO v_cancelled, v_lost
        FROM unnest(p_probes, p_probe_tokens) AS p(run_id, token)
        LEFT JOIN {schema}.queue q
          ON q.run_id = p.run_id AND q.lease_token = p.token AND q.status = 'running';
    END IF;
    IF cardinality(v_step_runs) > 0 THEN
        -- One pass over the queue both checks the leases and reads the
        -- cancel requests that the next steps of these runs must honour. The
        -- KEY SHARE lock makes a cancel that comes meanwhile wait for this
        -- commit: once it has returned, the runs' next boundaries see it.
        WITH valid AS MATERIALIZED (
            SELECT q.run_id, q.lease_token, q.cancel_requested FROM {schema}.queue q
            WHERE q.run_id = ANY(v_step_runs) AND q.status = 'running'
            ORDER BY q.run_id FOR KEY SHARE  -- in run order, as cancel_set locks them
        ), input AS MATERIALIZED (
            SELECT (e ->> 0)::uuid AS run_id, (e ->> 1)::bigint AS token, e ->> 2 AS key,
                   (e ->> 3)::int AS pos, e ->> 4 AS status, e -> 5 AS output,
                   nullif(e -> 6, 'null') AS error, (e ->> 7)::int AS attempts,
                   (e ->> 8)::timestamptz AS started
            FROM jsonb_array_elements(p_steps) e
        ), journaled AS (
            INSERT INTO {schema}.steps AS s
                (run_id, step_key, position, status, output, error, attempts, started_at)
            SELECT i.run_id, i.key, i.pos, i.status, i.output, i.error, i.attempts, i.started
            FROM input i JOIN valid v ON v.run_id = i.run_id AND v.lease_token = i.token
            ON CONFLICT (run_id, step_key) DO UPDATE
                SET status = excluded.status, output = excluded.output,
                    error = excluded.error, attempts = excluded.attempts,
                    started_at = excluded.started_at, finished_at = now()
                WHERE s.status = 'retrying'
        )
        SELECT coalesce(v_cancelled, '{}')
                   || coalesce(array_agg(v.run_id) FILTER (WHERE v.cancel_requested), '{}'),
               coalesce(v_lost, '{}') || ARRAY(
                   SELECT DISTINCT i.run_id FROM input i WHERE NOT EXISTS (
                       SELECT FROM valid w WHERE w.run_id = i.run_id AND w.lease_token = i.token))
        INTO v_cancelled, v_lost
        FROM valid v;
    END IF;

    IF cardinality(v_fin_runs) > 0 THEN
        -- Lock in run order, as cancel_set does, so the two cannot deadlock.
        WITH locked AS MATERIALIZED (
            SELECT q.run_id, q.lease_token, q.status, q.holds_slots FROM {schema}.queue q
            WHERE q.run_id = ANY(v_fin_runs) ORDER BY q.run_id FOR UPDATE
        )
        SELECT array_agg(l.run_id) INTO v_holders
        FROM locked l
        JOIN jsonb_array_elements(p_finishes) e
          ON l.run_id = (e ->> 0)::uuid AND l.lease_token = (e ->> 1)::bigint
        WHERE l.holds_slots AND l.status = 'running';
        IF v_holders IS NOT NULL THEN  -- whatever comes next, they stop running
            PERFORM {schema}.release_slots(v_holders);
        END IF;
        WITH fin AS MATERIALIZED (
            SELECT (e ->> 0)::uuid AS run_id, (e ->> 1)::bigint AS token, e ->> 2 AS status,
                   e -> 3 AS output, nullif(e -> 4, 'null') AS error,
                   (e ->> 5)::timestamptz AS available, (e ->> 6)::boolean AS retry,
                   (e ->> 7)::boolean AS handler_failed
            FROM jsonb_array_elements(p_finishes) e
        ), done AS (
            DELETE FROM {schema}.queue q USING fin f
            WHERE q.run_id = ANY(v_fin_runs) AND q.run_id = f.run_id
              AND q.lease_token = f.token AND q.status = 'running'
              AND (f.status IN ('completed', 'failed', 'cancelled') OR q.cancel_requested)
            RETURNING q.run_id, q.attempt, q.started_at, q.worker_id,
                      CASE WHEN q.cancel_requested THEN 'cancelled' ELSE f.status END AS status,
                      CASE WHEN q.cancel_requested THEN NULL ELSE f.output END AS output,
                      CASE WHEN q.cancel_requested OR f.status = 'cancelled'
                           THEN coalesce(q.cancel_reason, f.error) ELSE f.error END AS error
        ), finished AS (
            INSERT INTO {schema}.results
                (run_id, status, output, error, attempt, worker_id, started_at)
            SELECT run_id, status, output, error, attempt, worker_id, started_at FROM done
        ), requeued AS (
            UPDATE {schema}.queue q
            SET status = f.status, available_at = f.available, worker_id = NULL,
                attempt = q.attempt + f.retry::int,
                handler_attempts = q.handler_attempts + f.handler_failed::int,
                error = coalesce(f.error, q.error)
            FROM fin f
            WHERE q.run_id = ANY(v_fin_runs) AND q.run_id = f.run_id
              AND q.lease_token = f.token AND q.status = 'running' AND NOT q.cancel_requested
              AND f.status IN ('queued', 'sleeping')
            RETURNING q.available_at
        )
        SELECT coalesce(bool_or(available_at <= now()), false) INTO v_due FROM requeued;
        IF v_due THEN
            PERFORM pg_notify('{channel}', '');
        END IF;
    END IF;

    RETURN QUERY SELECT coalesce(v_cancelled, '{}'), coalesce(v_lost, '{}'), clock_timestamp();
END
$$;
