-- Runs started later than their event: batches, and debounces.

-- start_batch: take up to p_max of the oldest items of a batch (skipping
-- those another transaction is taking) and start one run with their events,
-- in order, under the flow control of the first. Returns how many events it took.
CREATE FUNCTION {schema}.start_batch(p_function text, p_key text, p_max int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_events text[];
    v_retries int;
    v_flow jsonb;
BEGIN
    WITH chosen AS (
        SELECT seq FROM {schema}.batch_items
        WHERE function_id = p_function AND batch_key = p_key
        ORDER BY seq LIMIT p_max
        FOR UPDATE SKIP LOCKED
    ), taken AS (
        DELETE FROM {schema}.batch_items b USING chosen c
        WHERE b.function_id = p_function AND b.batch_key = p_key AND b.seq = c.seq
        RETURNING b.seq, b.event_id, b.retries, b.flow
    )
    SELECT array_agg(event_id ORDER BY seq), max(retries), (array_agg(flow ORDER BY seq))[1]
    INTO v_events, v_retries, v_flow FROM taken;
    IF v_events IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM {schema}.start_run(p_function, v_events, v_retries, NULL, v_flow);
    PERFORM pg_notify('{channel}', '');
    RETURN cardinality(v_events);
END
$$;

-- start_full_batches: start a run for every full batch among these
-- (function, key) pairs; a send calls it for the batches it added to.
CREATE FUNCTION {schema}.start_full_batches(p_functions text[], p_keys text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_function text;
    v_key text;
    v_max int;
BEGIN
    FOR v_function, v_key IN
        SELECT DISTINCT f, k FROM unnest(p_functions, p_keys) AS x(f, k) ORDER BY 1, 2
    LOOP
        LOOP
            SELECT max(b.max_size) INTO v_max FROM (
                SELECT max_size FROM {schema}.batch_items
                WHERE function_id = v_function AND batch_key = v_key ORDER BY seq DESC LIMIT 1
            ) b;
            EXIT WHEN v_max IS NULL OR (
                SELECT count(*) FROM (SELECT FROM {schema}.batch_items
                                      WHERE function_id = v_function AND batch_key = v_key
                                      LIMIT v_max) n) < v_max;
            EXIT WHEN {schema}.start_batch(v_function, v_key, v_max) = 0;
        END LOOP;
    END LOOP;
END
$$;

-- start_due_batches: start a run for every batch of these functions whose
-- oldest event has waited its timeout. Returns when the next batch is due.
CREATE FUNCTION {schema}.start_due_batches(p_functions text[])
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    v_function text;
    v_key text;
    v_max int;
BEGIN
    FOR v_function, v_key, v_max IN
        SELECT function_id, batch_key, max(max_size) FROM {schema}.batch_items
        WHERE fire_at <= now() AND function_id = ANY(p_functions)
        GROUP BY 1, 2 ORDER BY 1, 2
    LOOP
        PERFORM {schema}.start_batch(v_function, v_key, v_max);
    END LOOP;
    RETURN (SELECT min(fire_at) FROM {schema}.batch_items WHERE function_id = ANY(p_functions));
END
$$;

-- start_due_debounces: start the run of every debounce of these functions
-- that came due, with its latest event and that event's options (a sender
-- pushing one back holds its row: skipped). The run is admitted then
-- (idempotency within p_window, rate limit, singleton) and listens for its
-- cancel_on events from then on. Returns when the next is due.
CREATE FUNCTION {schema}.start_due_debounces(p_functions text[], p_window interval)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    v_started int;
BEGIN
    WITH due AS (
        SELECT function_id, key FROM {schema}.debounces
        WHERE due_at <= now() AND function_id = ANY(p_functions)
        ORDER BY due_at
        FOR UPDATE SKIP LOCKED
    ), fired AS (
        DELETE FROM {schema}.debounces d USING due
        WHERE d.function_id = due.function_id AND d.key = due.key
        RETURNING d.function_id, d.event_id, d.retries, d.flow
    )
    SELECT count({schema}.start_run(function_id, ARRAY[event_id], retries, NULL, flow, p_window))
    INTO v_started
    FROM fired;
    IF v_started > 0 THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN (SELECT min(due_at) FROM {schema}.debounces WHERE function_id = ANY(p_functions));
END
$$;
