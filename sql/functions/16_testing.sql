-- What `pgdurable.testing.execute` needs: a run with values given in place
-- of some of its steps, and time that passes at once.

-- start_test_run: a run of p_function for a new event p_event ({id, name,
-- data}), with the run options p_options (see start_run) and a journal
-- holding p_steps ({step key: value}): entries of no attempt (position 0,
-- outside the order of the run's steps), which its steps return instead of
-- executing (RunState.replayed, plan_invoke). Returns its id.
CREATE FUNCTION {schema}.start_test_run(
    p_function text, p_event jsonb, p_retries int, p_options jsonb, p_steps jsonb
) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    INSERT INTO {schema}.events (id, name, data, ts)
    VALUES (p_event ->> 'id', p_event ->> 'name', p_event -> 'data', now());
    v_run := {schema}.start_run(p_function, ARRAY[p_event ->> 'id'], p_retries, NULL, p_options);
    INSERT INTO {schema}.steps (run_id, step_key, position, status, output, attempts, started_at)
    SELECT v_run, s.key, 0, 'completed', s.value, 0, now() FROM jsonb_each(p_steps) AS s;
    UPDATE {schema}.queue SET prefilled = true WHERE run_id = v_run;
    PERFORM pg_notify('{channel}', '');
    RETURN v_run;
END
$$;

-- elapse_test_run: time passes at once for p_run and the runs it started
-- (children, and theirs): once none of them has work under way (running,
-- or due), the clock of their queue rows moves to the earliest time one
-- waits for (a sleep, a retry's backoff, a wait's or an invoke's timeout):
-- every such time comes that much earlier, so they still come in order.
-- Returns how many runs became due, and whether the runs are stuck: one
-- waits with no timeout, and nothing else of theirs is left to happen.
CREATE FUNCTION {schema}.elapse_test_run(p_run uuid, OUT due int, OUT stuck boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_tree uuid[];
    v_skip interval;
BEGIN
    WITH RECURSIVE tree AS (
        SELECT p_run AS id
        UNION SELECT r.id FROM {schema}.runs r JOIN tree t ON r.parent_run_id = t.id
    )
    SELECT array_agg(id) INTO v_tree FROM tree;
    due := 0;
    stuck := false;
    IF EXISTS (SELECT FROM {schema}.queue q WHERE q.run_id = ANY(v_tree)
               AND (q.status = 'running' OR q.available_at <= now())) THEN
        RETURN;  -- work under way: time stands still
    END IF;
    SELECT min(q.available_at) - now() INTO v_skip FROM {schema}.queue q
    WHERE q.run_id = ANY(v_tree) AND q.available_at < 'infinity';
    IF v_skip IS NULL THEN
        stuck := EXISTS (SELECT FROM {schema}.queue q WHERE q.run_id = ANY(v_tree));
        RETURN;
    END IF;
    UPDATE {schema}.queue q SET available_at = greatest(q.available_at - v_skip, now())
    WHERE q.run_id = ANY(v_tree) AND q.available_at < 'infinity';
    SELECT count(*) INTO due FROM {schema}.queue q
    WHERE q.run_id = ANY(v_tree) AND q.available_at <= now();
    PERFORM pg_notify('{channel}', '');
END
$$;
