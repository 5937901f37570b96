-- sql/functions/: the functions, types, triggers and views of the schema, one file
-- per concern, run in name order. Unlike the tables (sql/migrations/, one
-- versioned file per change) they are dropped and recreated as a whole by
-- any `migrate` that finds them changed, so each has one current text.

-- --8<-- [start:state-machine]
-- The state machine of a run. A run is a row of `runs` (what and why) and,
-- while it is not finished, a row of `queue` (where it stands); once
-- finished, a row of `results` instead. Sub-states are columns of `queue`.
--
--   status (table)       sub-state (queue columns)          meaning
--   queued (queue)       -                                  due at available_at
--                        blocked_key                        a concurrency key was full; waits for a hand-off
--                        reserved_key                       a slot was handed to it; due now
--                        throttle (marked)                  had its throttle turn; due at available_at
--   running (queue)      worker_id, lease_token, lease      a worker executes it until the lease lapses
--                        holds_slots                        it counts against its concurrency keys
--                        cancel_requested                   ends `cancelled` at its next transition
--   sleeping (queue)     available_at                       step.sleep; due again when it ends
--   waiting (queue)      waits rows, available_at           wait_for_event or invoke; due at the timeout
--   completed | failed | cancelled | skipped (results)      finished; never changes again
--
-- Before a run exists, a debounced event waits in `debounces` and a batched
-- one in `batch_items`, until start_due_debounces or start_batch starts it.
--
--   from          to                      made by
--   -             queued                  send_events, send_generated (sends, cron ticks) through
--                                         start_runs_with_options; start_run, for runs started one
--                                         by one (invoke_child, replay_run, start_batch,
--                                         start_due_debounces, on_failure handlers from runs_ended)
--   -             skipped                 admit (idempotency duplicate: no run at all; rate limit,
--                                         singleton in progress: a skipped result)
--   queued        running                 claim_runs, send_and_claim (an eager start); admit_flow may
--                                         instead defer it (throttle) or block it (concurrency)
--   queued        queued (reserved_key)   hand_off, from release_slots when a slot frees
--   running       queued                  flush (a retry after a failure, or a release at shutdown)
--   running       running (another worker)  claim_runs, once its lease lapsed (recover_claimed)
--   running       sleeping                flush (a sleep step's park)
--   running       waiting                 register_wait, invoke_child
--   sleeping      running                 claim_runs, once available_at passes (recover_claimed
--                                         completes the sleep step)
--   waiting       queued                  wake (deliver_events: an event matched; runs_ended: the
--                                         invoked child ended)
--   waiting       running                 claim_runs at the timeout (recover_claimed records it)
--   running       completed | failed      flush; recover_claimed (lost its worker too often: failed)
--   running       cancelled               flush (cancel_requested, or a start or finish timeout the
--                                         worker found); recover_claimed (lapsed with a cancel request)
--   queued, sleeping, waiting  cancelled  cancel_set (cancel_run, cancel_runs, cancel_on via
--                                         deliver_events, singleton mode=cancel via admit)
--   any end       -                       runs_ended (trigger on results): waits and singleton key
--                                         go, the parent of an invoke wakes, on_failure starts
-- --8<-- [end:state-machine]

-- Helpers shared by the other functions.

-- Functions on the hot path pin their plans with `SET enable_... = off`
-- (see each). A plan that needs a disabled node anyway (a sort to lock rows
-- in order, a nested loop over unnest) is then costed past jit_above_cost,
-- and JIT compiling it would take far longer than running it: they also
-- `SET jit = off`.

-- Run ids are UUIDv7: time-ordered, so the primary keys of runs, queue,
-- results and steps grow at their right edge instead of touching random
-- pages of indexes that hold every run ever made.
CREATE FUNCTION {schema}.uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
        substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
$$;

-- The lowest UUIDv7 of p_at's millisecond (uuid_v7 writes the same prefix).
CREATE FUNCTION {schema}.uuid_at(p_at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM p_at) * 1000)::bigint), 12, '0')
            || repeat('0', 20))::uuid;
$$;

-- When the UUIDv7 p_id was made (to the millisecond).
CREATE FUNCTION {schema}.uuid_time(p_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_timestamp(('x' || left(replace(p_id::text, '-', ''), 12))::bit(48)::bigint / 1000.0);
$$;

-- The advisory lock that orders senders of an event name (shared) against
-- steps starting to wait for it (exclusive). See register_wait.
CREATE FUNCTION {schema}.event_lock_key(p_name text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('{schema}/' || p_name, 0);
$$;

-- An event as a waiting step receives it.
CREATE FUNCTION {schema}.event_doc(e {schema}.events) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', e.id, 'name', e.name, 'data', e.data, 'ts', e.ts);
$$;

-- json_key: a key option's value as the text it is stored under, spelled
-- as Python's json.dumps(value, sort_keys=True, separators=(",", ":"))
-- spells it, since keys are computed both here (sends) and in Python (an
-- invoked child's flow keys): objects' keys in code point order, no spaces,
-- characters outside printable ASCII escaped, and numbers with a fraction
-- or exponent written as Python writes the float they parse to.
CREATE FUNCTION {schema}.json_key(p_value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_text text := p_value::text;
    v_float float8;
BEGIN
    CASE jsonb_typeof(p_value)
    WHEN 'object' THEN
        RETURN '{' || coalesce((SELECT string_agg({schema}.json_key(to_jsonb(k)) || ':'
                                                  || {schema}.json_key(v), ',' ORDER BY k COLLATE "C")
                                FROM jsonb_each(p_value) AS e(k, v)), '') || '}';
    WHEN 'array' THEN
        RETURN '[' || coalesce((SELECT string_agg({schema}.json_key(v), ',' ORDER BY n)
                                FROM jsonb_array_elements(p_value) WITH ORDINALITY AS e(v, n)),
                               '') || ']';
    WHEN 'string' THEN  -- Postgres already escapes quotes, backslashes and controls as Python does
        IF v_text !~ '^[ -~]*$' THEN
            v_text := (SELECT string_agg(CASE
                WHEN ascii(c) BETWEEN 32 AND 126 THEN c
                WHEN ascii(c) < 65536 THEN '\u' || lpad(to_hex(ascii(c)), 4, '0')
                ELSE '\u' || to_hex(55296 + ((ascii(c) - 65536) >> 10))
                     || '\u' || to_hex(56320 + ((ascii(c) - 65536) & 1023)) END, '' ORDER BY n)
                FROM regexp_split_to_table(v_text, '') WITH ORDINALITY AS t(c, n));
        END IF;
        RETURN v_text;
    WHEN 'number' THEN
        IF v_text !~ '[.eE]' THEN
            RETURN v_text;  -- an int
        END IF;
        v_float := v_text::float8;
        IF v_float = trunc(v_float) AND abs(v_float) < 1e16 THEN
            RETURN trunc(v_float)::numeric::text || '.0';
        END IF;
        RETURN v_float::text;
    ELSE
        RETURN v_text;  -- true, false, null
    END CASE;
END
$$;

-- event_value: the value at p_path in an event document, for an option
-- named p_what (in the error); a missing or null one is an error, as in
-- Python (_expressions.lookup).
CREATE FUNCTION {schema}.event_value(p_doc jsonb, p_path text[], p_what text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_value jsonb := p_doc #> p_path;
BEGIN
    IF v_value IS NULL OR v_value = 'null' THEN
        RAISE EXCEPTION 'event % (id %): %: the triggering event has no value at %',
            quote_literal(p_doc ->> 'name'), p_doc ->> 'id', p_what,
            quote_literal(array_to_string(p_path, '.'))
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Send the field, or change the function''s option.';
    END IF;
    RETURN v_value;
END
$$;

-- restart_options: of a run's options (see send_events), what a replay or
-- fork of it is started with (start_run's), kept in runs.options for where
-- the function's code is not loaded: flow control and cancel_on, not
-- admission (that is the send's alone) nor batch or debounce placement.
CREATE FUNCTION {schema}.restart_options(p_options jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT nullif(p_options - ARRAY['idempotency', 'rate_limit', 'singleton', 'batch', 'debounce'],
                  '{}');
$$;

-- start_run: a new run of p_function for the events p_events (the first
-- is its triggering event), due now, with the run options p_options (see
-- send_events): admitted (idempotency, rate limit, singleton; p_window is
-- the idempotency window) when it is created, listening for its cancel_on
-- events from then on. Returns its id, or null if it was a duplicate (no
-- run); a skipped run is recorded as such. Sends create their runs in sets
-- instead (send_events: the hot path); this is for the runs started one by
-- one (children, batches, debounces, failure handlers, replays, forks).
-- p_fork_of: the run it is a fork of, whose journal fork_run copies.
CREATE FUNCTION {schema}.start_run(
    p_function text, p_events text[], p_retries int, p_parent uuid DEFAULT NULL,
    p_options jsonb DEFAULT NULL, p_window interval DEFAULT NULL, p_fork_of uuid DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid := {schema}.uuid_v7();
    v_verdict jsonb := '"run"';
BEGIN
    IF p_options ?| ARRAY['idempotency', 'rate_limit', 'singleton'] THEN
        v_verdict := {schema}.admit(v_run, p_function, p_options, coalesce(p_window, '0'));
        IF v_verdict = '"duplicate"' THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO {schema}.runs (id, function_id, event_ids, parent_run_id, forked_from, options)
    VALUES (v_run, p_function, p_events, p_parent, p_fork_of, {schema}.restart_options(p_options));
    INSERT INTO {schema}.event_refs (event_id, run_id)  -- see expired_events
    SELECT DISTINCT e, v_run FROM unnest(p_events) AS e;
    IF v_verdict <> '"run"' THEN  -- rate limited, or a singleton in progress
        INSERT INTO {schema}.results (run_id, status, error, attempt)
        VALUES (v_run, 'skipped', v_verdict, 0);
        RETURN v_run;
    END IF;
    INSERT INTO {schema}.queue (run_id, function_id, event_id, event_count, available_at, retries,
                                slot_keys, slot_limits, throttle, prefilled)
    VALUES (v_run, p_function, p_events[1], cardinality(p_events),
            {schema}.flow_due(now(), p_options), p_retries, {schema}.flow_keys(p_options),
            {schema}.flow_limits(p_options), p_options -> 'throttle', p_fork_of IS NOT NULL);
    IF p_options ? 'cancels' THEN
        PERFORM {schema}.listen_for_cancels(ARRAY[v_run], ARRAY[p_options -> 'cancels']);
    END IF;
    RETURN v_run;
END
$$;

-- listen_for_cancels: the runs p_runs listen, each for the events of its
-- cancel_on listeners (p_cancels, per run: [{event, path, value, condition,
-- vars, expires}, ...], as _functions._cancel_listeners writes them).
CREATE FUNCTION {schema}.listen_for_cancels(p_runs uuid[], p_cancels jsonb[])
RETURNS void LANGUAGE sql AS $$
    WITH listening AS (
        INSERT INTO {schema}.waits (run_id, step_key, event_name, match_path, match_value,
                                    condition, condition_vars, cancel, expires_at)
        SELECT x.run_id, 'cancel_on:' || c.ord, c.spec ->> 'event',
               ARRAY(SELECT jsonb_array_elements_text(c.spec -> 'path')), c.spec -> 'value',
               (c.spec ->> 'condition')::jsonpath, nullif(c.spec -> 'vars', 'null'), true,
               (c.spec ->> 'expires')::timestamptz
        FROM unnest(p_runs, p_cancels) AS x(run_id, cancels),
             jsonb_array_elements(x.cancels) WITH ORDINALITY AS c(spec, ord)
        RETURNING event_name, match_path
    )
    INSERT INTO {schema}.wait_paths (event_name, match_path)
    SELECT DISTINCT event_name, match_path FROM listening
    ON CONFLICT DO NOTHING;
$$;

-- A run as a claim hands it to a worker. The first event comes as columns
-- (`event_trace`: the trace context of the span that sent it, if traced);
-- any more (batches) as JSON. `journal` is read only for runs that ran
-- before (`resumed`). `due_at` is when the run became claimable,
-- `started_at` when it first started, `now` the database's clock at the
-- claim: the worker times the run on this clock (see RunState.now).
CREATE TYPE {schema}.claimed_run AS (
    id uuid, lease_token bigint, function_id text, attempt int,
    handler_attempts int, retries int, cancel_requested boolean,
    event_id text, event_name text, event_data jsonb, event_ts timestamptz, event_trace jsonb,
    more_events jsonb, journal jsonb, resumed boolean, due_at timestamptz, started_at timestamptz,
    now timestamptz
);
