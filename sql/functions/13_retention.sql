-- Retention: what pruning removes, and how (the tables: 0013_retention.sql).
--
-- History (runs, results, steps) is range-partitioned by run id, one UTC
-- day of creation per partition (`<table>_d<YYYYMMDD>`, three tables per
-- suffix). Once (nearly) every run of a closed partition has expired, the
-- partition is detached and dropped whole, the runs it still keeps (not
-- finished, or kept longer) moved first into the default partition
-- `<table>_kept`: no DELETE of a day of rows, no bloat. Expired runs of
-- the other partitions are deleted in batches (a function that keeps its
-- runs 1 hour, in a partition of runs kept 7 days). Everything else (events,
-- the audit log, idempotency keys, rate-limit logs) is deleted in batches.
--
-- The caller (_prune.py) runs each step in its own short transaction with
-- a lock_timeout: detaching takes the partitioned tables' exclusive lock,
-- and must give up rather than queue every worker behind a long
-- transaction that holds a weaker one.

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

-- add_partitions: the daily partitions of history up to p_until's day,
-- each made as a plain table and then attached (which takes no lock that
-- stops writers of the partitioned table), with any rows of its range that
-- went to `_kept` meanwhile (no partition was there yet) moved into it.
-- Returns how many days it added.
CREATE FUNCTION {schema}.add_partitions(p_until timestamptz) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_lower uuid;
    v_upper uuid;
    v_day date;
    v_suffix text;
    v_table text;
    v_key text;
    v_added int := 0;
BEGIN
    LOOP
        SELECT coalesce(
                   (SELECT upper_id FROM {schema}.history_partitions ORDER BY upper_id DESC LIMIT 1),
                   {schema}.uuid_at(date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
        INTO v_lower;
        v_day := ({schema}.uuid_time(v_lower) AT TIME ZONE 'UTC')::date;
        EXIT WHEN v_day > (p_until AT TIME ZONE 'UTC')::date;
        v_upper := {schema}.uuid_at((v_day + 1)::timestamp AT TIME ZONE 'UTC');
        v_suffix := 'd' || to_char(v_day, 'YYYYMMDD');
        FOREACH v_table IN ARRAY ARRAY['runs', 'results', 'steps'] LOOP
            v_key := CASE v_table WHEN 'runs' THEN 'id' ELSE 'run_id' END;
            EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.%I INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS)', v_table || '_' || v_suffix, v_table);
            EXECUTE format('WITH moved AS (DELETE FROM {schema}.%I WHERE %I >= $1 AND %I < $2 '
                           'RETURNING *) INSERT INTO {schema}.%I SELECT * FROM moved',
                           v_table || '_kept', v_key, v_key, v_table || '_' || v_suffix)
            USING v_lower, v_upper;
            EXECUTE format('ALTER TABLE {schema}.%I ATTACH PARTITION {schema}.%I '
                           'FOR VALUES FROM (%L) TO (%L)',
                           v_table, v_table || '_' || v_suffix, v_lower, v_upper);
        END LOOP;
        INSERT INTO {schema}.history_partitions (suffix, lower_id, upper_id)
        VALUES (v_suffix, v_lower, v_upper);
        v_added := v_added + 1;
    END LOOP;
    RETURN v_added;
END
$$;

-- close_partitions: count the runs of each partition whose day has passed
-- at p_as_of (no run is created in it any more, as a rule) and analyze it,
-- and the partitioned tables, which autovacuum never analyzes. A partition
-- whose day has not begun yet (made ahead) is never closed, whatever
-- p_as_of: runs will go there. Returns the suffixes closed.
CREATE FUNCTION {schema}.close_partitions(p_as_of timestamptz) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_closed text[] := '{}';
    v_part record;
    v_rows bigint;
BEGIN
    FOR v_part IN
        SELECT suffix FROM {schema}.history_partitions
        WHERE closed_rows IS NULL AND {schema}.uuid_time(upper_id) <= p_as_of
          AND (lower_id IS NULL OR {schema}.uuid_time(lower_id) <= now())
        ORDER BY upper_id
    LOOP
        EXECUTE format('SELECT count(*) FROM {schema}.%I', 'runs_' || v_part.suffix) INTO v_rows;
        UPDATE {schema}.history_partitions SET closed_rows = v_rows WHERE suffix = v_part.suffix;
        EXECUTE format('ANALYZE {schema}.%I, {schema}.%I, {schema}.%I', 'runs_' || v_part.suffix,
                       'results_' || v_part.suffix, 'steps_' || v_part.suffix);
        v_closed := v_closed || v_part.suffix;
    END LOOP;
    IF cardinality(v_closed) > 0 THEN
        ANALYZE {schema}.runs, {schema}.results, {schema}.steps;
    END IF;
    RETURN v_closed;
END
$$;

-- The query of the runs of partition p_suffix ('kept': the default one)
-- whose retention has passed at $1: finished, and finished at least their
-- function's retention of their status ago (the app's where the function
-- has no policy of its own; never where it is null, or no policy is
-- recorded at all).
CREATE FUNCTION {schema}.expired_query(p_suffix text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
        WITH policy AS MATERIALIZED (
            SELECT p.function_id, k.status, k.keep
            FROM {schema}.retention p,
                 LATERAL (VALUES ('completed', p.completed), ('failed', p.failed),
                                 ('cancelled', p.cancelled), ('skipped', p.skipped)) AS k(status, keep)
        )
        SELECT x.run_id
        FROM {schema}.%I x
        JOIN {schema}.%I r ON r.id = x.run_id
        LEFT JOIN policy own ON own.function_id = r.function_id AND own.status = x.status
        LEFT JOIN policy app ON app.function_id = '' AND app.status = x.status
        WHERE x.finished_at <= $1 - (SELECT min(keep) FROM policy)
          AND x.finished_at <= $1 - CASE WHEN own.function_id IS NULL THEN app.keep
                                         ELSE own.keep END
    $q$, 'results_' || p_suffix, 'runs_' || p_suffix);
$$;

-- partition_expired: how many runs partition p_suffix holds, and how many
-- of them have expired at p_as_of.
CREATE FUNCTION {schema}.partition_expired(
    p_suffix text, p_as_of timestamptz, OUT total bigint, OUT expired bigint
) LANGUAGE plpgsql STABLE AS $$
BEGIN
    EXECUTE format('SELECT count(*) FROM {schema}.%I', 'runs_' || p_suffix) INTO total;
    EXECUTE 'SELECT count(*) FROM (' || {schema}.expired_query(p_suffix) || ') e'
    INTO expired USING p_as_of;
END
$$;

-- drop_partition: drop partition p_suffix whole; the runs it holds that
-- have not expired at p_as_of (with their results and journals) move to
-- `_kept` first. They are found with the partition's tables share-locked
-- (their few writers, steps of a run kept beyond its day, wait) and only
-- then are the partitioned tables locked to detach it: a short exclusive
-- lock. Written straight into `_kept`, the results fire no runs_ended:
-- those runs have ended before. Returns the number of runs dropped.
CREATE FUNCTION {schema}.drop_partition(p_suffix text, p_as_of timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_keep uuid[];
    v_total bigint;
    v_table text;
    v_key text;
BEGIN
    EXECUTE format('LOCK TABLE {schema}.%I, {schema}.%I, {schema}.%I IN SHARE MODE',
                   'runs_' || p_suffix, 'results_' || p_suffix, 'steps_' || p_suffix);
    EXECUTE format('SELECT count(*), array_agg(r.id) FILTER (WHERE e.run_id IS NULL) '
                   'FROM {schema}.%I r LEFT JOIN (%s) e ON e.run_id = r.id',
                   'runs_' || p_suffix, {schema}.expired_query(p_suffix))
    INTO v_total, v_keep USING p_as_of;
    FOREACH v_table IN ARRAY ARRAY['runs', 'results', 'steps'] LOOP
        EXECUTE format('ALTER TABLE {schema}.%I DETACH PARTITION {schema}.%I',
                       v_table, v_table || '_' || p_suffix);
    END LOOP;
    IF v_keep IS NOT NULL THEN
        FOREACH v_table IN ARRAY ARRAY['runs', 'results', 'steps'] LOOP
            v_key := CASE v_table WHEN 'runs' THEN 'id' ELSE 'run_id' END;
            EXECUTE format('INSERT INTO {schema}.%I SELECT * FROM {schema}.%I WHERE %I = ANY($1)',
                           v_table || '_kept', v_table || '_' || p_suffix, v_key)
            USING v_keep;
        END LOOP;
    END IF;
    EXECUTE format('DROP TABLE {schema}.%I, {schema}.%I, {schema}.%I', 'runs_' || p_suffix,
                   'results_' || p_suffix, 'steps_' || p_suffix);
    DELETE FROM {schema}.history_partitions WHERE suffix = p_suffix;
    RETURN v_total - coalesce(cardinality(v_keep), 0);
END
$$;

-- delete_expired: delete up to p_limit runs of partition p_suffix expired
-- at p_as_of, with their results and journals. Returns how many.
CREATE FUNCTION {schema}.delete_expired(p_suffix text, p_as_of timestamptz, p_limit int)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_runs uuid[];
BEGIN
    EXECUTE 'SELECT array_agg(run_id) FROM (' || {schema}.expired_query(p_suffix)
            || ' LIMIT $2) e' INTO v_runs USING p_as_of, p_limit;
    IF v_runs IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM {schema}.%I WHERE run_id = ANY($1)', 'steps_' || p_suffix) USING v_runs;
    EXECUTE format('DELETE FROM {schema}.%I WHERE run_id = ANY($1)', 'results_' || p_suffix) USING v_runs;
    EXECUTE format('DELETE FROM {schema}.%I WHERE id = ANY($1)', 'runs_' || p_suffix) USING v_runs;
    RETURN cardinality(v_runs);
END
$$;

-- The events prune may delete: past the dedupe window, sent before the
-- oldest partition of history still there (so that only runs kept beyond
-- their partition, or made later from old events, such as replays, can
-- still refer to them), and referred to by no run, waiting step, pending
-- batch or debounce.
CREATE FUNCTION {schema}.expired_events(p_as_of timestamptz, p_dedupe interval, p_limit int)
RETURNS TABLE (id text) LANGUAGE sql STABLE AS $$
    SELECT e.id FROM {schema}.events e
    WHERE e.received_at <= p_as_of - p_dedupe
      AND e.received_at < (SELECT {schema}.uuid_time(lower_id) FROM {schema}.history_partitions
                           ORDER BY lower_id NULLS FIRST LIMIT 1)
      AND NOT EXISTS (SELECT FROM {schema}.runs r WHERE r.event_ids[1] = e.id)
      AND NOT EXISTS (SELECT FROM {schema}.runs r
                      WHERE cardinality(r.event_ids) > 1 AND r.event_ids @> ARRAY[e.id])
      AND NOT EXISTS (SELECT FROM {schema}.batch_items b WHERE b.event_id = e.id)
      AND NOT EXISTS (SELECT FROM {schema}.debounces d WHERE d.event_id = e.id)
    ORDER BY e.received_at
    LIMIT p_limit;
$$;

CREATE FUNCTION {schema}.delete_events(p_as_of timestamptz, p_dedupe interval, p_limit int)
RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM {schema}.events e
        WHERE e.id IN (SELECT id FROM {schema}.expired_events(p_as_of, p_dedupe, p_limit))
        RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;

-- The audit log's entries older than the app's audit retention.
CREATE FUNCTION {schema}.delete_audit(p_as_of timestamptz, p_limit int) RETURNS bigint
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM {schema}.rls_audit_log a
        WHERE a.id IN (SELECT a.id FROM {schema}.rls_audit_log a
                       WHERE a.at <= p_as_of - (SELECT audit FROM {schema}.retention
                                                WHERE function_id = '')
                       ORDER BY a.at LIMIT p_limit)
        RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;

-- Idempotency keys past their window, and rate-limit logs at rest (their
-- newest admission a period ago): admit writes either again when needed.
CREATE FUNCTION {schema}.delete_bookkeeping(p_as_of timestamptz, OUT keys bigint, OUT rate_limits bigint)
LANGUAGE sql AS $$
    WITH k AS (
        DELETE FROM {schema}.run_keys WHERE expires_at <= p_as_of RETURNING 1
    ), r AS (
        DELETE FROM {schema}.rate_limits
        WHERE coalesce(admitted[cardinality(admitted)] + period <= p_as_of,
                       cardinality(admitted) = 0)  -- no period yet (older rows): kept
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM k), (SELECT count(*) FROM r);
$$;

-- How big each table of history is, how old its oldest row, and when the
-- next prune is due (set by the last one).
CREATE VIEW {schema}.retention_status AS
WITH sizes AS (
    SELECT t.name, sum(c.reltuples)::bigint AS estimated_rows,
           sum(pg_total_relation_size(c.oid))::bigint AS bytes
    FROM unnest(ARRAY['events', 'runs', 'results', 'steps', 'rls_audit_log',
                      'run_keys', 'rate_limits']) AS t(name)
    JOIN pg_class c ON c.oid = to_regclass('{schema}.' || t.name)
                    OR c.oid IN (SELECT inhrelid FROM pg_inherits
                                 WHERE inhparent = to_regclass('{schema}.' || t.name))
    WHERE c.relkind <> 'p'
    GROUP BY t.name
), last_prune AS (
    SELECT finished_at, next_due FROM {schema}.prune_log ORDER BY id DESC LIMIT 1
)
SELECT s.name AS table_name, greatest(s.estimated_rows, 0) AS estimated_rows, s.bytes,
       CASE s.name
           WHEN 'events' THEN (SELECT min(received_at) FROM {schema}.events)
           WHEN 'runs' THEN (SELECT {schema}.uuid_time(id) FROM {schema}.runs ORDER BY id LIMIT 1)
           WHEN 'results' THEN (SELECT min(finished_at) FROM {schema}.results)
           WHEN 'steps' THEN (SELECT {schema}.uuid_time(run_id) FROM {schema}.steps ORDER BY run_id LIMIT 1)
           WHEN 'rls_audit_log' THEN (SELECT min(at) FROM {schema}.rls_audit_log)
       END AS oldest,
       (SELECT finished_at FROM last_prune) AS last_pruned_at,
       (SELECT next_due FROM last_prune) AS next_prune_due
FROM sizes s;
