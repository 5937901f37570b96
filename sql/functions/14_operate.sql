-- What operators do to runs (forks, replays) and the log of who did it.

-- fork_run: a new run of p_run's function, due now, whose journal starts
-- with p_run's final steps (completed or failed) that began before step
-- p_from_step: those return their recorded outcome, and p_from_step and
-- everything after it execute again. p_event (jsonb {id, name, data}), when
-- given, replaces the first event: it is stored, not sent (it triggers
-- nothing else). p_options as for start_run; null: the ones p_run was
-- started with. Raises, writing nothing, if p_run or its step is unknown.
CREATE FUNCTION {schema}.fork_run(
    p_run uuid, p_from_step text, p_retries int, p_options jsonb, p_event jsonb
) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_source {schema}.runs;
    v_position int;
    v_events text[];
    v_run uuid;
BEGIN
    SELECT * INTO v_source FROM {schema}.runs WHERE id = p_run;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no run with id %', p_run USING ERRCODE = 'no_data_found';
    END IF;
    SELECT s.position INTO v_position FROM {schema}.steps s
    WHERE s.run_id = p_run AND s.step_key = p_from_step;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % has no step %', p_run, quote_literal(p_from_step)
        USING ERRCODE = 'no_data_found',
              HINT = 'its steps: ' || coalesce((SELECT string_agg(quote_literal(s.step_key), ', '
                                                                 ORDER BY s.position)
                                                FROM {schema}.steps s WHERE s.run_id = p_run),
                                               'none');
    END IF;
    v_events := v_source.event_ids;
    IF p_event IS NOT NULL THEN
        INSERT INTO {schema}.events (id, name, data, ts)
        VALUES (p_event ->> 'id', p_event ->> 'name', p_event -> 'data', now());
        v_events[1] := p_event ->> 'id';
    END IF;
    v_run := {schema}.start_run(v_source.function_id, v_events, p_retries, NULL,
                               coalesce(p_options, v_source.options), p_fork_of => p_run);
    INSERT INTO {schema}.steps (run_id, step_key, position, status, output, error, attempts,
                                started_at, finished_at, event_id)
    SELECT v_run, s.step_key, s.position, s.status, s.output, s.error, s.attempts,
           s.started_at, s.finished_at, s.event_id
    FROM {schema}.steps s
    WHERE s.run_id = p_run AND s.position < v_position AND s.status IN ('completed', 'failed');
    PERFORM pg_notify('{channel}', '');
    RETURN v_run;
END
$$;

-- audit: record that p_who did p_action to the runs p_runs (p_details: one
-- document per run, or null).
CREATE FUNCTION {schema}.audit(p_action text, p_runs uuid[], p_who text, p_details jsonb[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO {schema}.operator_audit_log (action, run_id, who, detail)
    SELECT p_action, a.run_id, p_who, a.detail
    FROM unnest(p_runs, p_details) AS a(run_id, detail);
$$;

-- What operators did: a public interface (see docs/guides/operating.md).
CREATE VIEW {schema}.operator_audit AS
SELECT at, action, run_id, who, detail FROM {schema}.operator_audit_log;
