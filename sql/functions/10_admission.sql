-- Admission of a new run at send time (idempotency=, rate_limit=, singleton=).

-- for_key: ' for key <key>' in a message, or nothing for the no-key key ''.
CREATE FUNCTION {schema}.for_key(p_key text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_key = '' THEN '' ELSE ' for key ' || p_key END;
$$;

-- admit: whether the new run p_run of p_function starts: 'run',
-- 'duplicate' (its idempotency key was used within p_window: no run at
-- all), or else the error document of a skipped run (rate limited, or a
-- singleton already running).
--   p_options: {"idempotency": key, "rate_limit": [key, limit, period in seconds],
--               "singleton": [key, "skip" or "cancel"]}
-- Every option decides first and only then does any spend: a run that one
-- option refuses uses up no other's budget (an idempotency key, a place in
-- the rate limit's window). Senders of one key take turns (an advisory
-- lock per idempotency and singleton key, the rate limit's row lock), so
-- what was decided holds until the sender commits.
CREATE FUNCTION {schema}.admit(p_run uuid, p_function text, p_options jsonb, p_window interval)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_once text := p_options ->> 'idempotency';
    v_solo text := p_options -> 'singleton' ->> 'key';
    v_rate text := p_options -> 'rate_limit' ->> 'key';
    v_limit int := (p_options -> 'rate_limit' ->> 'limit')::int;
    v_period interval := make_interval(secs => (p_options -> 'rate_limit' ->> 'period')::float8);
    v_admitted timestamptz[];
    v_now timestamptz;
    v_holder uuid;
BEGIN
    IF v_once IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock({schema}.admission_lock_key('idempotency', p_function, v_once));
        IF EXISTS (SELECT FROM {schema}.run_keys k WHERE k.function_id = p_function
                   AND k.key = v_once AND k.expires_at > now()) THEN
            RETURN '"duplicate"';
        END IF;
    END IF;
    IF v_solo IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock({schema}.admission_lock_key('singleton', p_function, v_solo));
        SELECT s.run_id INTO v_holder FROM {schema}.singletons s
        WHERE s.function_id = p_function AND s.key = v_solo;
        IF v_holder IS NOT NULL AND p_options -> 'singleton' ->> 'mode' = 'skip' THEN
            RETURN jsonb_build_object('type', 'SingletonRunning', 'traceback', null, 'message',
                format('run %s of this function is in progress%s', v_holder,
                       {schema}.for_key(v_solo)));
        END IF;
    END IF;
    IF v_rate IS NOT NULL THEN
        -- A sliding log: admitted if fewer than `limit` runs were admitted
        -- in the period before now, so no window of `period` ever holds
        -- more than `limit` admissions. Times are read once the key's row
        -- is locked, not at the start of the sender's transaction.
        -- An upsert, which locks the key's row even if prune has just
        -- deleted it (delete_bookkeeping: a log at rest goes).
        INSERT INTO {schema}.rate_limits AS r (function_id, key, period)
        VALUES (p_function, v_rate, v_period)
        ON CONFLICT (function_id, key) DO UPDATE SET period = excluded.period
        RETURNING r.admitted INTO v_admitted;
        v_now := clock_timestamp();
        v_admitted := ARRAY(SELECT a FROM unnest(v_admitted) AS a WHERE a > v_now - v_period
                            ORDER BY a);
        IF cardinality(v_admitted) >= v_limit THEN
            RETURN jsonb_build_object('type', 'RateLimited', 'traceback', null, 'message',
                format('rate limit of %s runs per %s reached%s',
                       v_limit, v_period, {schema}.for_key(v_rate)));
        END IF;
    END IF;

    -- Admitted: spend.
    IF v_once IS NOT NULL THEN
        INSERT INTO {schema}.run_keys (function_id, key, expires_at)
        VALUES (p_function, v_once, now() + p_window)
        ON CONFLICT (function_id, key) DO UPDATE SET expires_at = excluded.expires_at;
    END IF;
    IF v_rate IS NOT NULL THEN
        UPDATE {schema}.rate_limits SET admitted = v_admitted || v_now
        WHERE function_id = p_function AND key = v_rate;
    END IF;
    IF v_solo IS NOT NULL THEN
        IF v_holder IS NOT NULL THEN  -- mode "cancel": the run in progress gives way
            -- Its queue row before the key's row: the order in which a
            -- finishing run takes them (flush, then runs_ended).
            PERFORM {schema}.cancel_set(ARRAY[v_holder], ARRAY[jsonb_build_object(
                'type', 'Cancelled', 'traceback', null, 'message',
                format('replaced by run %s (singleton%s)', p_run, {schema}.for_key(v_solo)))]);
        END IF;
        INSERT INTO {schema}.singletons (function_id, key, run_id)
        VALUES (p_function, v_solo, p_run)
        ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id;
    END IF;
    RETURN '"run"';
END
$$;

-- The advisory lock that makes senders of one admission key take turns.
CREATE FUNCTION {schema}.admission_lock_key(p_option text, p_function text, p_key text)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('{schema}/' || p_option || '/' || p_function || '/' || p_key, 0);
$$;
