-- What follows a run's end, however it ends (completed, failed, cancelled,
-- its worker lost too often): one trigger on `results`, once per statement.

-- runs_ended:
-- - its remaining waits go (cancel_on listeners; steps of a cancelled run),
--   and its singleton key is free again;
-- - a parent waiting for it in step.invoke wakes with a
--   'pgdurable/run.finished' document (one probe of `waits_match` per run);
-- - if it failed and its function has an on_failure handler, that handler's
--   run starts, with a 'pgdurable/function.failed' event carrying the run
--   id, the error and the run's event (and that event's trace context, so
--   the handler's run links to what started the failed one). A run's
--   result is inserted once, so its handler starts once; the event's id is
--   fresh, so no event sent before can stand in for it or suppress it.
CREATE FUNCTION {schema}.runs_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_runs uuid[];
    v_keys text[];
    v_docs jsonb[];
    v_handlers int;
BEGIN
    DELETE FROM {schema}.waits w WHERE w.run_id = ANY(ARRAY(SELECT run_id FROM ended));
    DELETE FROM {schema}.singletons s WHERE s.run_id = ANY(ARRAY(SELECT run_id FROM ended));

    SELECT array_agg(w.run_id), array_agg(w.step_key), array_agg(jsonb_build_object(
               'name', 'pgdurable/run.finished',
               'data', jsonb_build_object('run_id', x.run_id, 'status', x.status,
                                          'output', x.output, 'error', x.error)))
    INTO v_runs, v_keys, v_docs
    FROM ended x
    JOIN {schema}.waits w
      ON w.event_name = 'pgdurable/run.finished' AND w.match_path = '{data,run_id}'
     AND w.match_value = to_jsonb(x.run_id::text);
    IF v_runs IS NOT NULL AND {schema}.wake(v_runs, v_keys, v_docs) > 0 THEN
        PERFORM pg_notify('{channel}', '');
    END IF;

    IF NOT EXISTS (SELECT FROM ended WHERE status = 'failed')
       OR NOT EXISTS (SELECT FROM {schema}.failure_handlers) THEN
        RETURN NULL;
    END IF;
    WITH failed AS MATERIALIZED (
        SELECT {schema}.uuid_v7()::text AS event_id, h.handler_id, h.retries,
               jsonb_build_object(
                   'run_id', x.run_id, 'function_id', r.function_id, 'error', x.error,
                   'event', (SELECT {schema}.event_doc(e) FROM {schema}.events e
                             WHERE e.id = r.event_ids[1])) AS data,
               (SELECT e.trace FROM {schema}.events e WHERE e.id = r.event_ids[1]) AS trace
        FROM ended x
        JOIN {schema}.runs r ON r.id = x.run_id
        JOIN {schema}.failure_handlers h ON h.function_id = r.function_id
        WHERE x.status = 'failed'
    ), announced AS (
        INSERT INTO {schema}.events (id, name, data, ts, trace)
        SELECT event_id, 'pgdurable/function.failed', data, now(), trace FROM failed
    )
    SELECT count({schema}.start_run(f.handler_id, ARRAY[f.event_id], f.retries)) INTO v_handlers
    FROM failed f;
    IF v_handlers > 0 THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_ended AFTER INSERT ON {schema}.results
REFERENCING NEW TABLE AS ended FOR EACH STATEMENT EXECUTE FUNCTION {schema}.runs_ended();
