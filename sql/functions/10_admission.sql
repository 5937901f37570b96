-- Admission of a new run at send time (idempotency=, rate_limit=).

-- admit: whether a run of p_function with these options starts: 'run',
-- 'duplicate' (its idempotency key was used within p_window: no run at
-- all), or 'rate_limited' (recorded as a skipped run). Senders of the same
-- key are serialized by the key's row lock.
--   p_options: {"idempotency": key, "rate_limit": [key, limit, period in seconds]}
CREATE FUNCTION {schema}.admit(p_function text, p_options jsonb, p_window interval)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_key text := p_options -> 'rate_limit' ->> 0;
    v_period interval := make_interval(secs => (p_options -> 'rate_limit' ->> 2)::float8);
    v_step interval := v_period / greatest((p_options -> 'rate_limit' ->> 1)::int, 1);
    v_tat timestamptz;
BEGIN
    IF p_options ? 'idempotency' THEN
        INSERT INTO {schema}.run_keys AS k (function_id, key, expires_at)
        VALUES (p_function, p_options ->> 'idempotency', now() + p_window)
        ON CONFLICT (function_id, key) DO UPDATE SET expires_at = excluded.expires_at
            WHERE k.expires_at <= now();
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;
    IF p_options ? 'rate_limit' THEN
        INSERT INTO {schema}.rate_limits (function_id, key, tat)
        VALUES (p_function, v_key, now()) ON CONFLICT DO NOTHING;
        SELECT greatest(r.tat, now()) INTO v_tat FROM {schema}.rate_limits r
        WHERE r.function_id = p_function AND r.key = v_key FOR UPDATE;
        IF v_tat + v_step - now() > v_period THEN
            RETURN 'rate_limited';
        END IF;
        UPDATE {schema}.rate_limits SET tat = v_tat + v_step
        WHERE function_id = p_function AND key = v_key;
    END IF;
    RETURN 'run';
END
$$;
