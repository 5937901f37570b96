-- Sending events: store them, create their runs, wake waiting steps.

-- send_events: insert events (skipping ids already stored) and the runs
-- they trigger, in one statement; NOTIFY once if any run is due. p_dedupe
-- is how long an idempotency key holds.
--   p_events: [[id, name, data, ts or null, trace or null, computed keys (optional)], ...]
--     positional: a row per event of the hot path, where names would
--     double the cost of writing and reading them (1.2 to 1.7 us more per
--     row: bench/named_or_positional.py). Computed keys: {function id:
--     [value, ...]}, the values of the function's keys that are Python
--     callables (see resolve_runs).
--   p_specs: the functions each event name triggers (see resolve_runs). A
--     library older than this file sends the runs resolved already, as an
--     array: taken as they are (resolved runs, below).
--   Resolved runs: [[1-based index of the event, function id, retries, options], ...]
--   The options, rarer, are named; each is optional (written by run_options):
--     cancels: [{event, path, value, condition, vars, expires}, ...] (listen_for_cancels)
--     batch: {key, max_size, timeout}; debounce: {key, period, timeout} (here)
--     idempotency (a key), rate_limit {key, limit, period},
--       singleton {key, mode} (admit)
--     slots [{key, limit}], throttle {key, limit, period, burst}, priority
--       (seconds) (11_flow.sql)
--   Periods and timeouts are in seconds.
-- Ids starting with 'pgdurable:' are pgdurable's own (send_generated):
-- refused here, so no sender can take one first.
CREATE FUNCTION {schema}.send_events(p_events jsonb, p_specs jsonb, p_dedupe interval)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_reserved text := (SELECT x ->> 0 FROM jsonb_array_elements(p_events) AS x
                        WHERE starts_with(x ->> 0, 'pgdurable:') LIMIT 1);
BEGIN
    IF v_reserved IS NOT NULL THEN
        RAISE EXCEPTION 'event id % is in the namespace reserved for pgdurable''s own ids',
            v_reserved USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Give events ids that do not start with ''pgdurable:''.';
    END IF;
    PERFORM {schema}.send_generated(p_events, p_specs, p_dedupe);
END
$$;

-- send_generated: send_events for events sent from steps (step.send_event),
-- whose ids pgdurable generates (in its reserved namespace); workers only.
CREATE FUNCTION {schema}.send_generated(p_events jsonb, p_specs jsonb, p_dedupe interval)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT s.due FROM {schema}.store_events(p_events, p_specs, p_dedupe) s) THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
END
$$;

-- Resolving a send: which runs its events start, and their options.
-- Python sends and SQL ones (send, send_batch, event triggers) resolve the
-- same way, here, from function specs: Python's own registry for an app's
-- sends (_functions.send_spec), the registry workers record for SQL's
-- (registry_specs). p_specs maps an event name to the specs of the
-- functions it triggers, in order:
--   {id, retries, options?}; options (each optional), keys written KEY:
--     idempotency: KEY; rate_limit {key, limit, period}; singleton {key, mode};
--     debounce {key, period, timeout}; batch {key, max_size, timeout};
--     concurrency [{key, limit, scope}]; throttle {key, limit, period, burst};
--     priority: KEY (to a number of seconds);
--     cancel_on [{event, match (a dotted path or null), timeout, if {text, jsonpath, vars}}],
--       vars holding literals and {"event": path} for the triggering event's fields
--   KEY: null (no key), {"path": [field, ...]} into the event document, or
--     {"callable": name, "n": i}: computed in Python, and sent as element i of
--     the event's 6th element's entry for the function (p_events: see send_events).
-- Periods and timeouts are in seconds.

-- option_value: the value of a KEY for an event (its document p_doc, and
-- the values Python computed for the function, p_computed).
CREATE FUNCTION {schema}.option_value(p_key jsonb, p_doc jsonb, p_computed jsonb, p_what text)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_key ? 'path' THEN
        RETURN {schema}.event_value(p_doc, ARRAY(SELECT jsonb_array_elements_text(p_key -> 'path')),
                                    p_what);
    END IF;
    IF p_computed -> ((p_key ->> 'n')::int) IS NULL THEN
        RAISE EXCEPTION 'event % (id %): % is computed by a Python callable (%), which a send '
                        'from SQL cannot call', quote_literal(p_doc ->> 'name'), p_doc ->> 'id',
                        p_what, p_key ->> 'callable'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Send this event from Python, or give the option a dotted path '
                         'such as ''data.user_id''.';
    END IF;
    RETURN p_computed -> ((p_key ->> 'n')::int);
END
$$;

-- option_key: a KEY's value as key text ('' for no key).
CREATE FUNCTION {schema}.option_key(p_key jsonb, p_doc jsonb, p_computed jsonb, p_what text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_key IS NULL OR p_key = 'null' THEN ''
                ELSE {schema}.json_key({schema}.option_value(p_key, p_doc, p_computed, p_what)) END;
$$;

-- cancel_listener: what a new run listens for to be cancelled, for one
-- entry of its function's cancel_on (see listen_for_cancels).
CREATE FUNCTION {schema}.cancel_listener(p_cancel jsonb, p_doc jsonb, p_function text)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_what text := 'cancel_on of function ' || quote_literal(p_function);
    v_match text := p_cancel ->> 'match';
    v_if jsonb := nullif(p_cancel -> 'if', 'null');
BEGIN
    RETURN jsonb_build_object(
        'event', p_cancel -> 'event',
        'path', to_jsonb(coalesce(string_to_array(v_match, '.'), '{}')),
        'value', CASE WHEN v_match IS NULL THEN 'null'::jsonb ELSE {schema}.event_value(
            p_doc, string_to_array(v_match, '.'),
            format('%s match=%s', v_what, quote_literal(v_match))) END,
        'condition', v_if -> 'jsonpath',
        'vars', CASE WHEN v_if IS NOT NULL THEN coalesce((
                    SELECT jsonb_object_agg(k, CASE WHEN jsonb_typeof(v) = 'object'
                        THEN {schema}.event_value(
                            p_doc, ARRAY(SELECT jsonb_array_elements_text(v -> 'event')),
                            'if_ ' || quote_literal(v_if ->> 'text'))
                        ELSE v END)
                    FROM jsonb_each(v_if -> 'vars') AS x(k, v)), '{}') END,
        'expires', to_jsonb(now() + make_interval(secs => (p_cancel ->> 'timeout')::float8)));
END
$$;

-- run_options: the options a run of the function p_spec describes starts
-- with for an event (send_events' 4th element of a run), or null.
CREATE FUNCTION {schema}.run_options(p_spec jsonb, p_doc jsonb, p_computed jsonb)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    o jsonb := p_spec -> 'options';
    v_fn text := quote_literal(p_spec ->> 'id');
    v_priority jsonb;
    v_option text;
    v_label text;
    r jsonb := '{}';
BEGIN
    IF o IS NULL THEN
        RETURN NULL;
    END IF;
    IF o ? 'cancel_on' THEN
        r := r || jsonb_build_object('cancels', (
            SELECT jsonb_agg({schema}.cancel_listener(c, p_doc, p_spec ->> 'id') ORDER BY n)
            FROM jsonb_array_elements(o -> 'cancel_on') WITH ORDINALITY AS x(c, n)));
    END IF;
    -- Options {key, ...}: as given, their key replaced by its text.
    FOR v_option, v_label IN
        SELECT k.option, k.label FROM (VALUES ('batch', 'batch'), ('rate_limit', 'rate limit'),
            ('debounce', 'debounce'), ('singleton', 'singleton'), ('throttle', 'throttle'))
            AS k(option, label) WHERE o ? k.option
    LOOP
        r := r || jsonb_build_object(v_option, o -> v_option || jsonb_build_object('key',
            {schema}.option_key(o -> v_option -> 'key', p_doc, p_computed,
                                format('%s key of function %s', v_label, v_fn))));
    END LOOP;
    IF o ? 'idempotency' THEN
        r := r || jsonb_build_object('idempotency', {schema}.option_key(
            o -> 'idempotency', p_doc, p_computed, 'idempotency key of function ' || v_fn));
    END IF;
    IF o ? 'concurrency' THEN  -- a slot key is scoped: '<function id> <key>', or '* <key>' for the app
        r := r || jsonb_build_object('slots', (
            SELECT jsonb_agg(jsonb_build_object(
                'key', CASE WHEN c ->> 'scope' = 'app' THEN '*' ELSE p_spec ->> 'id' END || ' '
                       || {schema}.option_key(c -> 'key', p_doc, p_computed,
                                              'concurrency key of function ' || v_fn),
                'limit', c -> 'limit') ORDER BY n)
            FROM jsonb_array_elements(o -> 'concurrency') WITH ORDINALITY AS x(c, n)));
    END IF;
    IF o ? 'priority' THEN
        v_priority := {schema}.option_value(o -> 'priority', p_doc, p_computed,
                                            'priority of function ' || v_fn);
        IF jsonb_typeof(v_priority) <> 'number' THEN
            RAISE EXCEPTION 'event % (id %): priority of function %: % is not a number of seconds',
                quote_literal(p_doc ->> 'name'), p_doc ->> 'id', v_fn,
                CASE jsonb_typeof(v_priority) WHEN 'string' THEN quote_literal(v_priority #>> '{}')
                     ELSE v_priority::text END
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        r := r || jsonb_build_object('priority',
                                     greatest(-600, least(600, v_priority::text::float8)));
    END IF;
    RETURN r;
END
$$;

-- resolve_runs: the runs a send's events start, as store_events reads them
-- ([event index, function id, retries, options (if any)]), from p_specs.
CREATE FUNCTION {schema}.resolve_runs(p_events jsonb, p_specs jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(CASE WHEN s.spec ? 'options' THEN jsonb_build_array(
               x.idx, s.spec -> 'id', s.spec -> 'retries', {schema}.run_options(
                   s.spec, jsonb_build_object('id', x.e -> 0, 'name', x.e -> 1, 'data', x.e -> 2,
                                              'ts', x.e -> 3),
                   x.e -> 5 -> (s.spec ->> 'id')))
           ELSE jsonb_build_array(x.idx, s.spec -> 'id', s.spec -> 'retries') END
           ORDER BY x.idx, s.n), '[]')
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS x(e, idx)
    CROSS JOIN LATERAL jsonb_array_elements(p_specs -> (x.e ->> 1)) WITH ORDINALITY AS s(spec, n);
$$;

-- store_events: what send_events does but the NOTIFY; returns whether a
-- run or a waiting step became due. Given a worker (p_worker), up to
-- p_limit of the plain runs (no options) of p_functions that are due now
-- are created leased to it instead, and returned in `claimed`
-- (send_and_claim). New events are delivered to the steps waiting for
-- them. Senders hold a shared lock per event name until they commit; a
-- step that starts waiting takes it exclusively (register_wait), so either
-- the sender sees the new wait or the wait sees the committed event: no
-- lost wake-up.
CREATE FUNCTION {schema}.store_events(
    p_events jsonb, p_specs jsonb, p_dedupe interval,
    p_worker text DEFAULT NULL, p_functions text[] DEFAULT NULL, p_limit int DEFAULT 0,
    p_lease interval DEFAULT NULL,
    OUT due boolean, OUT claimed {schema}.claimed_run[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_runs jsonb := CASE WHEN jsonb_typeof(p_specs) = 'array' THEN p_specs
                         ELSE {schema}.resolve_runs(p_events, p_specs) END;
    v_inserted text[];
    v_names text[];
BEGIN
    -- The window bounds idempotency keys; a caller's negative one would end
    -- them before they are written.
    p_dedupe := greatest(p_dedupe, interval '0');
    PERFORM pg_advisory_xact_lock_shared(k)
    FROM (SELECT DISTINCT {schema}.event_lock_key(x ->> 1) AS k
          FROM jsonb_array_elements(p_events) AS x ORDER BY 1) AS keys;

    WITH input AS (
        SELECT x.e ->> 0 AS id, x.e ->> 1 AS name, x.e -> 2 AS data,
               (x.e ->> 3)::timestamptz AS ts, nullif(x.e -> 4, 'null') AS trace, x.idx
        FROM jsonb_array_elements(p_events) WITH ORDINALITY AS x(e, idx)
    ), inserted AS (
        -- received_at: when this statement ran, not when its transaction
        -- began (a sender's transaction may be old): see register_wait.
        -- A stored event is never rewritten (runs, waits and audits refer
        -- to it): an id already stored is a duplicate, however old.
        INSERT INTO {schema}.events AS e (id, name, data, ts, received_at, trace)
        SELECT id, name, data, coalesce(ts, now()), clock_timestamp(), trace FROM input
        ON CONFLICT (id) DO NOTHING
        RETURNING e.id, e.name, e.data, e.ts, e.trace
    ), planned AS MATERIALIZED (  -- plain runs; those with options: start_runs_with_options
        SELECT {schema}.uuid_v7() AS id, r ->> 1 AS fn, (r ->> 2)::int AS retries,
               inserted.id AS event_id, greatest(inserted.ts, now()) AS available_at,
               input.idx
        FROM jsonb_array_elements(v_runs) AS r
        JOIN input ON input.idx = (r ->> 0)::int
        JOIN inserted ON inserted.id = input.id
        WHERE jsonb_array_length(r) = 3
    ), leased AS MATERIALIZED (  -- started at once by the sender's own worker
        SELECT p.* FROM planned p
        WHERE p_limit > 0 AND p.fn = ANY(p_functions) AND p.available_at <= now()
        ORDER BY p.idx LIMIT p_limit
    ), new_runs AS (
        INSERT INTO {schema}.runs (id, function_id, event_ids)
        SELECT id, fn, ARRAY[event_id] FROM planned
    ), queued AS (
        INSERT INTO {schema}.queue (run_id, function_id, event_id, available_at, retries,
                                    status, worker_id, lease_token, started_at)
        SELECT p.id, p.fn, p.event_id, p.available_at, p.retries, 'queued', NULL, 0, NULL
        FROM planned p WHERE p.id NOT IN (SELECT id FROM leased)
        UNION ALL
        SELECT p.id, p.fn, p.event_id, now() + p_lease, p.retries, 'running', p_worker, 1, now()
        FROM planned p JOIN leased USING (id)
        RETURNING available_at, status
    )
    SELECT coalesce(bool_or(q.available_at <= now()) FILTER (WHERE q.status = 'queued'), false),
           (SELECT array_agg(ROW(l.id, 1, l.fn, 0, 0, l.retries, false,
                                 e.id, e.name, e.data, e.ts, e.trace, NULL, NULL, false, now(), now(),
                                 now()
                                )::{schema}.claimed_run ORDER BY l.idx)
            FROM leased l JOIN inserted e ON e.id = l.event_id),
           (SELECT array_agg(id ORDER BY input.idx) FROM inserted JOIN input USING (id)),
           (SELECT array_agg(DISTINCT name) FROM inserted)
    INTO due, claimed, v_inserted, v_names FROM queued q;

    IF jsonb_path_exists(v_runs, 'strict $[*] ? (@.size() > 3)') THEN
        due := {schema}.start_runs_with_options(p_events, v_runs, v_inserted, p_dedupe) OR due;
    END IF;
    IF EXISTS (SELECT FROM {schema}.wait_paths WHERE event_name = ANY(v_names)) THEN
        due := {schema}.deliver_events(v_inserted) > 0 OR due;
    END IF;
END
$$;

-- start_runs_with_options: the runs of send_events whose functions have
-- options (resolved runs with a 4th element), for the events it inserted
-- (p_inserted): admission (idempotency, rate limit, singleton), skipped
-- runs, debounces, batches and cancel_on listeners. Returns whether a run
-- it queued is due now.
CREATE FUNCTION {schema}.start_runs_with_options(
    p_events jsonb, p_runs jsonb, p_inserted text[], p_dedupe interval
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_due boolean;
    v_batch_functions text[];
    v_batch_keys text[];
    v_listeners uuid[];
    v_cancels jsonb[];
BEGIN
    WITH planned AS MATERIALIZED (
        -- A debounced run is admitted when it is created, with its last event
        -- (start_due_debounces), not for each event that pushes it back.
        SELECT p.*, CASE WHEN p.options ?| ARRAY['idempotency', 'rate_limit', 'singleton']
                              AND p.debounce IS NULL
                         THEN {schema}.admit(p.id, p.fn, p.options, p_dedupe)
                         ELSE '"run"' END AS verdict
        FROM (SELECT {schema}.uuid_v7() AS id, r ->> 1 AS fn, (r ->> 2)::int AS retries,
                     e.id AS event_id, greatest(e.ts, now()) AS available_at,
                     r -> 3 AS options, r -> 3 -> 'cancels' AS cancels,
                     r -> 3 -> 'batch' AS batch, r -> 3 -> 'debounce' AS debounce,
                     (r ->> 0)::int AS idx
              FROM jsonb_array_elements(p_runs) AS r
              JOIN {schema}.events e ON e.id = p_events -> ((r ->> 0)::int - 1) ->> 0
              WHERE jsonb_array_length(r) > 3 AND e.id = ANY(p_inserted)) p
        ORDER BY p.idx
    ), new_runs AS (
        INSERT INTO {schema}.runs (id, function_id, event_ids, options)
        SELECT id, fn, ARRAY[event_id], {schema}.restart_options(options) FROM planned
        WHERE batch IS NULL AND debounce IS NULL AND verdict <> '"duplicate"'
    ), queued AS (
        INSERT INTO {schema}.queue (run_id, function_id, event_id, available_at, retries,
                                    slot_keys, slot_limits, throttle)
        SELECT id, fn, event_id, {schema}.flow_due(available_at, options), retries,
               {schema}.flow_keys(options), {schema}.flow_limits(options), options -> 'throttle'
        FROM planned
        WHERE batch IS NULL AND debounce IS NULL AND verdict = '"run"'
        RETURNING available_at
    ), skipped AS (  -- rate_limit=, singleton=: recorded with the reason, not run
        INSERT INTO {schema}.results (run_id, status, error, attempt)
        SELECT id, 'skipped', verdict, 0 FROM planned WHERE jsonb_typeof(verdict) = 'object'
    ), debounced AS (  -- debounce=: the latest event of a key replaces the pending one
        INSERT INTO {schema}.debounces AS d
            (function_id, key, event_id, retries, due_at, deadline, flow)
        SELECT DISTINCT ON (fn, debounce ->> 'key')
               fn, debounce ->> 'key', event_id, retries,
               available_at + make_interval(secs => (debounce ->> 'period')::float8),
               coalesce(available_at + make_interval(secs => (debounce ->> 'timeout')::float8),
                        'infinity'), options
        FROM planned WHERE debounce IS NOT NULL AND verdict = '"run"'
        ORDER BY fn, debounce ->> 'key', idx DESC
        ON CONFLICT (function_id, key) DO UPDATE
            SET event_id = excluded.event_id, retries = excluded.retries, flow = excluded.flow,
                due_at = least(excluded.due_at, d.deadline)
    ), batched AS (  -- batch=: the event waits for its batch instead
        INSERT INTO {schema}.batch_items
            (function_id, batch_key, event_id, max_size, retries, fire_at, flow)
        SELECT fn, batch ->> 'key', event_id, (batch ->> 'max_size')::int, retries,
               available_at + make_interval(secs => (batch ->> 'timeout')::float8), options
        FROM planned WHERE batch IS NOT NULL
        ORDER BY event_id
        RETURNING function_id, batch_key
    )
    SELECT coalesce((SELECT bool_or(available_at <= now()) FROM queued), false),
           (SELECT array_agg(function_id) FROM batched),
           (SELECT array_agg(batch_key) FROM batched),
           -- cancel_on: the runs started here listen for the events that cancel them
           (SELECT array_agg(id) FROM planned
            WHERE cancels IS NOT NULL AND verdict = '"run"' AND debounce IS NULL),
           (SELECT array_agg(cancels) FROM planned
            WHERE cancels IS NOT NULL AND verdict = '"run"' AND debounce IS NULL)
    INTO v_due, v_batch_functions, v_batch_keys, v_listeners, v_cancels;

    IF v_listeners IS NOT NULL THEN
        PERFORM {schema}.listen_for_cancels(v_listeners, v_cancels);
    END IF;

    IF v_batch_functions IS NOT NULL THEN
        PERFORM {schema}.start_full_batches(v_batch_functions, v_batch_keys);
    END IF;
    RETURN v_due;
END
$$;

-- deliver_events: wake the steps waiting for any of these (committed or
-- just inserted) events; each step gets the first matching event, in the
-- order given. Runs that listen for one of them in cancel_on are cancelled.
-- Returns how many runs became due.
CREATE FUNCTION {schema}.deliver_events(p_event_ids text[]) RETURNS int
LANGUAGE plpgsql
-- Each incoming event must probe `waits_match` with its own field value.
-- Statistics of `waits` are always stale (it churns), and the planner would
-- rather hash-join a sequential scan of it: O(waiting runs x events).
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
DECLARE
    v_runs uuid[];
    v_keys text[];
    v_docs jsonb[];
    v_cancel uuid[];
    v_reasons jsonb[];
    v_woken int := 0;
BEGIN
    WITH incoming AS (
        SELECT e.id, e.name, {schema}.event_doc(e) AS doc, k.ord
        FROM unnest(p_event_ids) WITH ORDINALITY AS k(id, ord)
        JOIN {schema}.events e ON e.id = k.id
    ), probes AS MATERIALIZED (  -- one index probe per (event, matched field)
        SELECT i.doc, i.ord, p.event_name, p.match_path,
               CASE WHEN p.match_path = '{}' THEN 'null'::jsonb
                    ELSE i.doc #> p.match_path END AS value
        FROM incoming i
        JOIN {schema}.wait_paths p ON p.event_name = i.name
    ), matched AS (
        SELECT DISTINCT ON (w.run_id, w.step_key) w.run_id, w.step_key, w.cancel, x.doc
        FROM probes x
        JOIN {schema}.waits w
          ON w.event_name = x.event_name AND w.match_path = x.match_path
         AND w.match_value = x.value
        WHERE (w.condition IS NULL
               OR jsonb_path_match(x.doc, w.condition, w.condition_vars, true) IS TRUE)
          AND (w.expires_at IS NULL OR w.expires_at > now())
          -- a run listens for events sent after its own triggering event:
          -- never for that one, nor for those before it in the same send
          AND (NOT w.cancel OR x.ord > coalesce(
                  (SELECT i.ord FROM incoming i JOIN {schema}.runs r ON r.event_ids[1] = i.id
                   WHERE r.id = w.run_id), 0))
        ORDER BY w.run_id, w.step_key, x.ord
    )
    SELECT array_agg(run_id) FILTER (WHERE NOT cancel),
           array_agg(step_key) FILTER (WHERE NOT cancel),
           array_agg(doc) FILTER (WHERE NOT cancel),
           array_agg(run_id) FILTER (WHERE cancel),
           array_agg(jsonb_build_object(
               'type', 'Cancelled', 'traceback', null, 'message',
               format('cancelled by event %s (id %s)', doc ->> 'name', doc ->> 'id')))
               FILTER (WHERE cancel)
    INTO v_runs, v_keys, v_docs, v_cancel, v_reasons FROM matched;
    IF v_runs IS NULL AND v_cancel IS NULL THEN
        RETURN 0;
    END IF;
    IF v_runs IS NOT NULL AND v_cancel IS NOT NULL THEN
        -- Both lock queue rows, each in run order; lock the union first so
        -- that two senders cannot take them in crossing orders.
        PERFORM FROM {schema}.queue q
        WHERE q.run_id = ANY(v_runs || v_cancel) ORDER BY q.run_id FOR UPDATE;
    END IF;
    IF v_runs IS NOT NULL THEN
        v_woken := {schema}.wake(v_runs, v_keys, v_docs);
    END IF;
    IF v_cancel IS NOT NULL THEN
        PERFORM {schema}.cancel_set(v_cancel, v_reasons);
    END IF;
    RETURN v_woken;
END
$$;
