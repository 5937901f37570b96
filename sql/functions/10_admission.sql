-- Admission of a new run at send time (idempotency=, rate_limit=, singleton=).

-- for_key: ' for key <key>' in a message, or nothing for the no-key key ''.
CREATE FUNCTION {schema}.for_key(p_key text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_key = '' THEN '' ELSE ' for key ' || p_key END;
$$;

-- admit: whether the new run p_run of p_function starts: 'run',
-- 'duplicate' (its idempotency key was used within p_window: no run at
-- all), or else the error document of a skipped run (rate limited, or a
-- singleton already running). Senders of one key are serialized by the
-- key's row lock.
--   p_options: {"idempotency": key, "rate_limit": [key, limit, period in seconds],
--               "singleton": [key, "skip" or "cancel"]}
CREATE FUNCTION {schema}.admit(p_run uuid, p_function text, p_options jsonb, p_window interval)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_key text := p_options -> 'rate_limit' ->> 0;
    v_limit int := (p_options -> 'rate_limit' ->> 1)::int;
    v_period interval := make_interval(secs => (p_options -> 'rate_limit' ->> 2)::float8);
    v_admitted timestamptz[];
    v_now timestamptz;
    v_holder uuid;
BEGIN
    IF p_options ? 'idempotency' THEN
        INSERT INTO {schema}.run_keys AS k (function_id, key, expires_at)
        VALUES (p_function, p_options ->> 'idempotency', now() + p_window)
        ON CONFLICT (function_id, key) DO UPDATE SET expires_at = excluded.expires_at
            WHERE k.expires_at <= now();
        IF NOT FOUND THEN
            RETURN '"duplicate"';
        END IF;
    END IF;
    IF p_options ? 'rate_limit' THEN
        -- A sliding log: admitted if fewer than `limit` runs were admitted
        -- in the period before now, so no window of `period` ever holds
        -- more than `limit` admissions.
        -- Times are read once the key's row is locked (senders of a key take
        -- turns), not at the start of the sender's transaction.
        INSERT INTO {schema}.rate_limits (function_id, key)
        VALUES (p_function, v_key) ON CONFLICT DO NOTHING;
        SELECT r.admitted INTO v_admitted FROM {schema}.rate_limits r
        WHERE r.function_id = p_function AND r.key = v_key FOR UPDATE;
        v_now := clock_timestamp();
        v_admitted := ARRAY(SELECT a FROM unnest(v_admitted) AS a WHERE a > v_now - v_period
                            ORDER BY a);
        IF cardinality(v_admitted) >= v_limit THEN
            RETURN jsonb_build_object('type', 'RateLimited', 'traceback', null, 'message',
                format('rate limit of %s runs per %s reached%s',
                       v_limit, v_period, {schema}.for_key(v_key)));
        END IF;
        UPDATE {schema}.rate_limits SET admitted = v_admitted || v_now
        WHERE function_id = p_function AND key = v_key;
    END IF;
    IF p_options ? 'singleton' THEN
        v_key := p_options -> 'singleton' ->> 0;
        LOOP
            INSERT INTO {schema}.singletons (function_id, key, run_id)
            VALUES (p_function, v_key, p_run) ON CONFLICT DO NOTHING;
            EXIT WHEN FOUND;
            SELECT s.run_id INTO v_holder FROM {schema}.singletons s
            WHERE s.function_id = p_function AND s.key = v_key;
            CONTINUE WHEN NOT FOUND;  -- it just ended
            IF p_options -> 'singleton' ->> 1 = 'skip' THEN
                RETURN jsonb_build_object('type', 'SingletonRunning', 'traceback', null, 'message',
                    format('run %s of this function is in progress%s', v_holder,
                           {schema}.for_key(v_key)));
            END IF;
            -- The holder's queue row first, then the key's row: the order in
            -- which a finishing run takes them (flush, then runs_ended).
            PERFORM {schema}.cancel_set(ARRAY[v_holder], ARRAY[jsonb_build_object(
                'type', 'Cancelled', 'traceback', null, 'message',
                format('replaced by run %s (singleton%s)', p_run, {schema}.for_key(v_key)))]);
            UPDATE {schema}.singletons SET run_id = p_run
            WHERE function_id = p_function AND key = v_key AND run_id = v_holder;
            EXIT WHEN FOUND;
        END LOOP;
    END IF;
    RETURN '"run"';
END
$$;
