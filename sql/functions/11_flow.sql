-- Flow control that holds across workers: concurrency slots and throttles,
-- checked when a worker claims runs; priorities, applied when a run is
-- queued. Lock order, everywhere: queue rows, then `slots` rows in key
-- order, then `throttles` rows in key order; nothing waits for a queue row
-- while holding a `slots` row (hand_off skips locked ones).

-- flow_due: when a run of an event due at p_due comes due, given its run
-- options: moved ahead by a positive priority (as if sent that many seconds
-- earlier: ahead of runs queued since), back by a negative one. A delayed
-- event's run is not moved ahead of its time.
CREATE FUNCTION {schema}.flow_due(p_due timestamptz, p_options jsonb) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_options ? 'priority'
                     AND (p_due <= now() OR (p_options ->> 'priority')::float8 < 0)
                THEN p_due - make_interval(secs => (p_options ->> 'priority')::float8)
                ELSE p_due END;
$$;

-- The concurrency keys and limits of a run, from its options' "slots":
-- [{key, limit}, ...] (null when it has none).
CREATE FUNCTION {schema}.flow_keys(p_options jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_options ? 'slots' THEN
        ARRAY(SELECT s ->> 'key' FROM jsonb_array_elements(p_options -> 'slots') s) END;
$$;
CREATE FUNCTION {schema}.flow_limits(p_options jsonb) RETURNS int[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_options ? 'slots' THEN
        ARRAY(SELECT (s ->> 'limit')::int FROM jsonb_array_elements(p_options -> 'slots') s) END;
$$;

-- hand_off: give freed slots of each key (p_counts of them) to the runs
-- blocked on it, oldest first: they become claimable with the slot
-- reserved, so no newcomer takes it first. The caller holds the keys' rows.
CREATE FUNCTION {schema}.hand_off(p_keys text[], p_counts int[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_woken int;
BEGIN
    WITH freed AS (
        SELECT f.key, sum(f.n)::int AS n FROM unnest(p_keys, p_counts) AS f(key, n)
        GROUP BY f.key HAVING sum(f.n) > 0
    ), chosen AS (
        SELECT b.run_id, f.key FROM freed f
        CROSS JOIN LATERAL (
            SELECT q.run_id FROM {schema}.queue q WHERE q.blocked_key = f.key
            ORDER BY q.available_at LIMIT f.n FOR UPDATE SKIP LOCKED) b
    ), woken AS (
        UPDATE {schema}.queue q SET blocked_key = NULL, reserved_key = c.key
        FROM chosen c WHERE q.run_id = c.run_id
        RETURNING c.key
    ), counted AS (
        SELECT key, count(*)::int AS n FROM woken GROUP BY key
    )
    UPDATE {schema}.slots s SET reserved = s.reserved + c.n FROM counted c WHERE s.key = c.key;
    GET DIAGNOSTICS v_woken = ROW_COUNT;
    IF v_woken > 0 THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
END
$$;

-- release_slots: the runs p_runs (locked by the caller) stop running or
-- end: the slots they hold, and the reservations of woken runs among them,
-- are handed on. Key rows left unused go.
CREATE FUNCTION {schema}.release_slots(p_runs uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[];
    v_used int[];
    v_reserved int[];
BEGIN
    SELECT array_agg(x.k ORDER BY x.k), array_agg(x.used ORDER BY x.k),
           array_agg(x.reserved ORDER BY x.k)
    INTO v_keys, v_used, v_reserved
    FROM (SELECT k, count(*) FILTER (WHERE q.holds_slots)::int AS used,
                 count(*) FILTER (WHERE q.reserved_key = k)::int AS reserved
          FROM {schema}.queue q, unnest(q.slot_keys) AS k
          WHERE q.run_id = ANY(p_runs) AND (q.holds_slots OR q.reserved_key = k)
          GROUP BY k) x;
    IF v_keys IS NULL THEN
        RETURN;
    END IF;
    PERFORM FROM {schema}.slots s WHERE s.key = ANY(v_keys) ORDER BY s.key FOR UPDATE;
    UPDATE {schema}.slots s SET used = s.used - x.used, reserved = s.reserved - x.reserved
    FROM unnest(v_keys, v_used, v_reserved) AS x(key, used, reserved) WHERE s.key = x.key;
    UPDATE {schema}.queue q SET holds_slots = false, reserved_key = NULL
    WHERE q.run_id = ANY(p_runs) AND (q.holds_slots OR q.reserved_key IS NOT NULL);
    PERFORM {schema}.hand_off(v_keys, ARRAY(SELECT u + r FROM unnest(v_used, v_reserved) AS x(u, r)));
    DELETE FROM {schema}.slots s WHERE s.key = ANY(v_keys) AND s.used = 0 AND s.reserved = 0;
END
$$;

-- full_key: the first of a run's concurrency keys (p_slot_keys, with their
-- limits) that has no slot free, or null. p_keys/p_used/p_reserved are the
-- counters as the claim has them so far; a slot handed to the run
-- (p_reserved_key) is its own.
CREATE FUNCTION {schema}.full_key(
    p_slot_keys text[], p_slot_limits int[], p_reserved_key text,
    p_keys text[], p_used int[], p_reserved int[]
) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    i int;
BEGIN
    FOR j IN 1 .. cardinality(p_slot_keys) LOOP
        i := array_position(p_keys, p_slot_keys[j]);
        IF p_slot_keys[j] IS DISTINCT FROM p_reserved_key
           AND p_used[i] + p_reserved[i] >= p_slot_limits[j] THEN
            RETURN p_slot_keys[j];
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- take_slots: the counters once a run takes a slot of each of its keys
-- (using up the one handed to it, if any).
CREATE FUNCTION {schema}.take_slots(
    p_slot_keys text[], p_reserved_key text, p_keys text[],
    INOUT used int[], INOUT reserved int[]
) LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    i int;
BEGIN
    FOR j IN 1 .. cardinality(p_slot_keys) LOOP
        i := array_position(p_keys, p_slot_keys[j]);
        used[i] := used[i] + 1;
        IF p_slot_keys[j] = p_reserved_key THEN
            reserved[i] := reserved[i] - 1;
        END IF;
    END LOOP;
END
$$;

-- throttle_turn: a run's turn under its throttle (p_throttle: {key, limit,
-- period in seconds, burst}, and `turned` once it has had its turn), given
-- its key's clocks; returns them moved on, and when the run may start (at
-- or before now(): now).
--
-- Two GCRA clocks per key, each letting `burst` go at once: `tat` gives a
-- new run its turn (a flood is spread out once, not re-examined at every
-- turn); `started` lets a run start only if the starts so far allow it, so
-- runs whose turns passed while no worker claimed them do not start
-- together (`waiting` counts those deferred so far by this claim).
CREATE FUNCTION {schema}.throttle_turn(
    p_throttle jsonb, INOUT tat timestamptz, INOUT started timestamptz, INOUT waiting int,
    OUT at timestamptz
) LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_step interval := make_interval(
        secs => (p_throttle ->> 'period')::float8 / (p_throttle ->> 'limit')::int);
    v_burst interval := v_step * ((p_throttle ->> 'burst')::int - 1);
BEGIN
    IF NOT p_throttle ? 'turned' THEN
        tat := greatest(tat, now());
        at := tat - v_burst;
        tat := tat + v_step;
    ELSE
        at := now();
    END IF;
    IF at <= now() THEN
        started := greatest(started, now());
        at := started - v_burst + v_step * waiting;
        IF at <= now() THEN
            started := started + v_step;
        ELSE
            waiting := waiting + 1;
        END IF;
    END IF;
END
$$;

-- admit_flow: of the runs a claim picked (p_runs, locked, in claim order)
-- whose functions have concurrency= or throttle=, which may start now.
-- Returns the others: throttled ones are due again at their turn, and
-- ones that found a concurrency key full are blocked on it until a slot is
-- handed to them. Counters are read and locked once, worked in memory
-- (full_key, throttle_turn, take_slots, run by run in claim order), and
-- written back once.
CREATE FUNCTION {schema}.admit_flow(p_runs uuid[]) RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_turn record;
    v_slots record;
    i int;
    v_full text;
    v_keys text[];
    v_used int[];
    v_reserved int[];
    v_tkeys text[];  -- '<function id> <key>', to look up
    v_tfunctions text[];
    v_tnames text[];
    v_tats timestamptz[];
    v_started timestamptz[];
    v_waiting int[];
    v_unthrottled uuid[] := '{}';
    v_defer uuid[] := '{}';
    v_defer_at timestamptz[] := '{}';
    v_block uuid[] := '{}';
    v_block_keys text[] := '{}';
    v_took uuid[] := '{}';
    v_given_back text[] := '{}';
BEGIN
    WITH locked AS (
        INSERT INTO {schema}.slots AS s (key)
        SELECT DISTINCT k FROM {schema}.queue q, unnest(q.slot_keys) AS k
        WHERE q.run_id = ANY(p_runs) AND NOT q.holds_slots
        ORDER BY k
        ON CONFLICT (key) DO UPDATE SET used = s.used
        RETURNING s.key, s.used, s.reserved
    )
    SELECT array_agg(key), array_agg(used), array_agg(reserved)
    INTO v_keys, v_used, v_reserved FROM locked;
    WITH locked AS (
        INSERT INTO {schema}.throttles AS t (function_id, key, tat, started_tat)
        SELECT DISTINCT q.function_id, q.throttle ->> 'key', now(), now() FROM {schema}.queue q
        WHERE q.run_id = ANY(p_runs) AND q.throttle IS NOT NULL
        ORDER BY 1, 2
        ON CONFLICT (function_id, key) DO UPDATE SET tat = t.tat
        RETURNING t.function_id, t.key, t.tat, t.started_tat
    )
    SELECT array_agg(function_id || ' ' || key), array_agg(function_id), array_agg(key),
           array_agg(tat), array_agg(started_tat), array_agg(0)
    INTO v_tkeys, v_tfunctions, v_tnames, v_tats, v_started, v_waiting FROM locked;

    FOR r IN
        SELECT q.run_id, q.function_id, q.slot_keys, q.slot_limits, q.holds_slots,
               q.reserved_key, q.throttle
        FROM unnest(p_runs) WITH ORDINALITY AS p(id, ord)
        JOIN {schema}.queue q ON q.run_id = p.id ORDER BY p.ord
    LOOP
        -- Concurrency first: a run blocked on a full key must not spend its
        -- throttle turn, or it would start unthrottled once a slot is
        -- handed to it. Then the throttle, before any slot is taken: a
        -- deferred run takes none (it keeps a slot handed to it).
        v_full := CASE WHEN r.slot_keys IS NOT NULL AND NOT r.holds_slots THEN {schema}.full_key(
            r.slot_keys, r.slot_limits, r.reserved_key, v_keys, v_used, v_reserved) END;
        IF v_full IS NOT NULL THEN
            v_block := v_block || r.run_id;
            v_block_keys := v_block_keys || v_full;
            IF r.reserved_key IS NOT NULL THEN
                -- The slot it was handed goes on to the next blocked run (at
                -- the end), not to a newcomer later in this loop.
                v_given_back := v_given_back || r.reserved_key;
            END IF;
            CONTINUE;
        END IF;
        IF r.throttle IS NOT NULL THEN
            i := array_position(v_tkeys, r.function_id || ' ' || (r.throttle ->> 'key'));
            v_turn := {schema}.throttle_turn(r.throttle, v_tats[i], v_started[i], v_waiting[i]);
            v_tats[i] := v_turn.tat;
            v_started[i] := v_turn.started;
            v_waiting[i] := v_turn.waiting;
            IF v_turn.at > now() THEN
                v_defer := v_defer || r.run_id;
                v_defer_at := v_defer_at || v_turn.at;
                CONTINUE;
            END IF;
            v_unthrottled := v_unthrottled || r.run_id;
        END IF;
        CONTINUE WHEN r.slot_keys IS NULL OR r.holds_slots;
        v_slots := {schema}.take_slots(r.slot_keys, r.reserved_key, v_keys, v_used, v_reserved);
        v_used := v_slots.used;
        v_reserved := v_slots.reserved;
        v_took := v_took || r.run_id;
    END LOOP;

    IF v_keys IS NOT NULL THEN
        UPDATE {schema}.slots s SET used = x.used, reserved = x.reserved
        FROM unnest(v_keys, v_used, v_reserved) AS x(key, used, reserved)
        WHERE s.key = x.key AND (s.used, s.reserved) IS DISTINCT FROM (x.used, x.reserved);
        UPDATE {schema}.queue q SET holds_slots = true, reserved_key = NULL
        WHERE q.run_id = ANY(v_took);
        UPDATE {schema}.queue q SET blocked_key = b.key, reserved_key = NULL
        FROM unnest(v_block, v_block_keys) AS b(run_id, key) WHERE q.run_id = b.run_id;
    END IF;
    IF v_tkeys IS NOT NULL THEN
        UPDATE {schema}.throttles t SET tat = x.tat, started_tat = x.started
        FROM unnest(v_tfunctions, v_tnames, v_tats, v_started) AS x(function_id, key, tat, started)
        WHERE t.function_id = x.function_id AND t.key = x.key;
        UPDATE {schema}.queue q SET throttle = NULL WHERE q.run_id = ANY(v_unthrottled);
        UPDATE {schema}.queue q  -- marked: it has had its turn
        SET available_at = d.at, throttle = q.throttle || '{"turned": true}'
        FROM unnest(v_defer, v_defer_at) AS d(run_id, at) WHERE q.run_id = d.run_id;
    END IF;
    IF cardinality(v_given_back) > 0 THEN
        UPDATE {schema}.slots s SET reserved = s.reserved - x.n
        FROM (SELECT k, count(*)::int AS n FROM unnest(v_given_back) AS k GROUP BY k) x
        WHERE s.key = x.k;
        PERFORM {schema}.hand_off(v_given_back, array_fill(1, ARRAY[cardinality(v_given_back)]));
    END IF;
    RETURN v_defer || v_block;
END
$$;
