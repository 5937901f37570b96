-- Retention: what pruning removes, and how (the tables: 0013_retention.sql).
--
-- History (runs, results, steps) is range-partitioned by run id, one UTC
-- day of creation per partition (`<table>_d<YYYYMMDD>`, three tables per
-- suffix; `_p<YYYYMMDD_HHMISS>` for another partition_interval). Once (nearly) every run of a closed partition has expired, the
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

-- add_partitions: the partitions of history from the last one there up to
-- the one holding now() and p_ahead more, each of the app's
-- partition_interval (a day unless set), aligned on multiples of it since
-- the epoch (days start at midnight UTC). Each is made as a plain table and
-- then attached, which takes no lock that stops writers of the partitioned
-- table, with any rows of its range that went to `_kept` meanwhile (no
-- partition was there yet) moved into it. Returns how many it added.
CREATE FUNCTION {schema}.add_partitions(p_ahead int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_width interval := coalesce((SELECT partition_interval FROM {schema}.retention
                                  WHERE function_id = ''), interval '1 day');
    v_lower uuid;
    v_upper uuid;
    v_start timestamptz;
    v_suffix text;
    v_table text;
    v_key text;
    v_added int := 0;
BEGIN
    LOOP
        SELECT coalesce(
                   (SELECT upper_id FROM {schema}.history_partitions ORDER BY upper_id DESC LIMIT 1),
                   {schema}.uuid_at(date_bin(v_width, now(), timestamptz 'epoch')))
        INTO v_lower;
        v_start := {schema}.uuid_time(v_lower);
        EXIT WHEN v_start > now() + p_ahead * v_width;
        v_upper := {schema}.uuid_at(date_bin(v_width, v_start, timestamptz 'epoch') + v_width);
        v_suffix := CASE WHEN v_width = interval '1 day'
                         THEN 'd' || to_char(v_start AT TIME ZONE 'UTC', 'YYYYMMDD')
                         ELSE 'p' || to_char(v_start AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS') END;
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
-- recorded at all). Its results rows are read from p_results if given (a
-- CTE of some of them), else from the whole partition.
CREATE FUNCTION {schema}.expired_query(p_suffix text, p_results text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
        WITH policy AS MATERIALIZED (
            SELECT p.function_id, k.status, k.keep
            FROM {schema}.retention p,
                 LATERAL (VALUES ('completed', p.completed), ('failed', p.failed),
                                 ('cancelled', p.cancelled), ('skipped', p.skipped)) AS k(status, keep)
        )
        SELECT x.run_id
        FROM %s x
        JOIN {schema}.%I r ON r.id = x.run_id
        LEFT JOIN policy own ON own.function_id = r.function_id AND own.status = x.status
        LEFT JOIN policy app ON app.function_id = '' AND app.status = x.status
        WHERE x.finished_at <= $1 - (SELECT min(keep) FROM policy)
          AND x.finished_at <= $1 - CASE WHEN own.function_id IS NULL THEN app.keep
                                         ELSE own.keep END
    $q$, coalesce(p_results, '{schema}.' || quote_ident('results_' || p_suffix)),
         'runs_' || p_suffix);
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
    LOCK TABLE {schema}.runs, {schema}.results, {schema}.steps IN ACCESS EXCLUSIVE MODE;
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
    DELETE FROM {schema}.event_refs x
    USING {schema}.history_partitions p
    WHERE p.suffix = p_suffix AND x.run_id < p.upper_id
      AND (p.lower_id IS NULL OR x.run_id >= p.lower_id) AND x.run_id <> ALL(coalesce(v_keep, '{}'));
    DELETE FROM {schema}.history_partitions WHERE suffix = p_suffix;
    RETURN v_total - coalesce(cardinality(v_keep), 0);
END
$$;

-- delete_expired: of the next p_limit results of partition p_suffix after
-- run id p_after (null: from the first), delete the runs expired at
-- p_as_of, with their results and journals. Returns how many, and the
-- last run id looked at (null once the partition has been gone through):
-- where the next batch starts, so that no batch reads what one before read.
CREATE FUNCTION {schema}.delete_expired(
    p_suffix text, p_as_of timestamptz, p_after uuid, p_limit int,
    OUT deleted bigint, OUT last_id uuid
) LANGUAGE plpgsql AS $$
DECLARE
    v_runs uuid[];
BEGIN
    EXECUTE format('WITH batch AS MATERIALIZED (SELECT * FROM {schema}.%I WHERE run_id > $2 '
                   'ORDER BY run_id LIMIT $3) '
                   'SELECT (SELECT run_id FROM batch ORDER BY run_id DESC LIMIT 1), '
                   '       (SELECT array_agg(run_id) FROM (%s) e)',
                   'results_' || p_suffix, {schema}.expired_query(p_suffix, 'batch'))
    INTO last_id, v_runs
    USING p_as_of, coalesce(p_after, '00000000-0000-0000-0000-000000000000'), p_limit;
    deleted := coalesce(cardinality(v_runs), 0);
    IF deleted > 0 THEN
        EXECUTE format('DELETE FROM {schema}.%I WHERE run_id = ANY($1)', 'steps_' || p_suffix)
        USING v_runs;
        EXECUTE format('DELETE FROM {schema}.%I WHERE run_id = ANY($1)', 'results_' || p_suffix)
        USING v_runs;
        EXECUTE format('DELETE FROM {schema}.%I WHERE id = ANY($1)', 'runs_' || p_suffix)
        USING v_runs;
        DELETE FROM {schema}.event_refs WHERE run_id = ANY(v_runs);
    END IF;
END
$$;

-- The events prune may delete are those received before event_cutoff:
-- past the dedupe window, and a minute or more before the oldest partition
-- of history still there. Runs sent with an event are in the partition of
-- its time (the run's id is made in the statement that stores the event,
-- a moment later; at a boundary, in the next partition): those of such events are
-- gone, but for the runs kept beyond their partition (in `_kept`) and the
-- runs started one by one later (replays, batches: event_refs). Nor may a
-- pending batch or debounce refer to it.
CREATE FUNCTION {schema}.event_cutoff(p_as_of timestamptz, p_dedupe interval)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT least(p_as_of - p_dedupe,
                 (SELECT {schema}.uuid_time(lower_id) - interval '1 minute'
                  FROM {schema}.history_partitions ORDER BY lower_id NULLS FIRST LIMIT 1));
$$;

-- The events of p_events (a CTE of some of them; else all) received before
-- $1 that no run, batch or debounce refers to.
CREATE FUNCTION {schema}.expired_events_query(p_events text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
        SELECT e.id FROM %s e
        WHERE e.received_at < $1
          AND NOT EXISTS (SELECT FROM {schema}.runs_kept r WHERE r.event_ids[1] = e.id)
          AND NOT EXISTS (SELECT FROM {schema}.runs_kept r
                          WHERE cardinality(r.event_ids) > 1 AND r.event_ids @> ARRAY[e.id])
          AND NOT EXISTS (SELECT FROM {schema}.event_refs x WHERE x.event_id = e.id)
          AND NOT EXISTS (SELECT FROM {schema}.batch_items b WHERE b.event_id = e.id)
          AND NOT EXISTS (SELECT FROM {schema}.debounces d WHERE d.event_id = e.id)
    $q$, coalesce(p_events, '{schema}.events'));
$$;

-- delete_events: of the next p_limit events received before the cutoff,
-- in the order they were received, after (p_after_at, p_after_id) (null:
-- from the first), delete those that may go. Returns how many, and the
-- last one looked at (null once all were looked at).
CREATE FUNCTION {schema}.delete_events(
    p_as_of timestamptz, p_dedupe interval, p_after_at timestamptz, p_after_id text, p_limit int,
    OUT deleted bigint, OUT last_at timestamptz, OUT last_id text
) LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'WITH batch AS MATERIALIZED ('
            '    SELECT * FROM {schema}.events e'
            '    WHERE e.received_at < $1 AND (e.received_at, e.id) > ($2, $3)'
            '    ORDER BY e.received_at, e.id LIMIT $4'
            '), gone AS ('
            '    DELETE FROM {schema}.events e WHERE e.id IN ('
            || {schema}.expired_events_query('batch') || ') RETURNING 1'
            '), last AS (SELECT received_at, id FROM batch ORDER BY received_at DESC, id DESC LIMIT 1)'
            ' SELECT (SELECT count(*) FROM gone), (SELECT received_at FROM last), (SELECT id FROM last)'
    INTO deleted, last_at, last_id
    USING {schema}.event_cutoff(p_as_of, p_dedupe), coalesce(p_after_at, '-infinity'),
          coalesce(p_after_id, ''), p_limit;
END
$$;

-- count_events: how many events may go now (a dry run).
CREATE FUNCTION {schema}.count_events(p_as_of timestamptz, p_dedupe interval) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_count bigint;
BEGIN
    EXECUTE 'SELECT count(*) FROM (' || {schema}.expired_events_query() || ') e'
    INTO v_count USING {schema}.event_cutoff(p_as_of, p_dedupe);
    RETURN v_count;
END
$$;

-- The audit logs' entries (RLS contexts, operators' actions) older than
-- the app's audit retention, up to p_limit of each.
CREATE FUNCTION {schema}.delete_audit(p_as_of timestamptz, p_limit int) RETURNS bigint
LANGUAGE sql AS $$
    WITH cutoff AS (
        SELECT p_as_of - audit AS at FROM {schema}.retention WHERE function_id = ''
    ), rls AS (
        DELETE FROM {schema}.rls_audit_log a
        WHERE a.id IN (SELECT a.id FROM {schema}.rls_audit_log a, cutoff c
                       WHERE a.at <= c.at ORDER BY a.at LIMIT p_limit)
        RETURNING 1
    ), operators AS (
        DELETE FROM {schema}.operator_audit_log a
        WHERE a.id IN (SELECT a.id FROM {schema}.operator_audit_log a, cutoff c
                       WHERE a.at <= c.at ORDER BY a.at LIMIT p_limit)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM rls) + (SELECT count(*) FROM operators);
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
                      'operator_audit_log', 'run_keys', 'rate_limits']) AS t(name)
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
           WHEN 'operator_audit_log' THEN (SELECT min(at) FROM {schema}.operator_audit_log)
       END AS oldest,
       (SELECT finished_at FROM last_prune) AS last_pruned_at,
       (SELECT next_due FROM last_prune) AS next_prune_due
FROM sizes s;

-- Making, dropping and analyzing partitions needs the tables' owner, and
-- partitions made after the roles were granted carry no grants: a worker
-- that connects as the least-privilege worker role prunes through these,
-- which run as the owner (the role that migrated).
ALTER FUNCTION {schema}.add_partitions(int)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.close_partitions(timestamptz)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.partition_expired(text, timestamptz)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.drop_partition(text, timestamptz)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.delete_expired(text, timestamptz, uuid, int)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- Running as the owner, they can drop any history: the worker role alone
-- may call them (apply_grants), not PUBLIC.
REVOKE EXECUTE ON FUNCTION {schema}.add_partitions(int), {schema}.close_partitions(timestamptz),
    {schema}.partition_expired(text, timestamptz), {schema}.drop_partition(text, timestamptz),
    {schema}.delete_expired(text, timestamptz, uuid, int) FROM PUBLIC;
