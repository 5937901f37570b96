-- Retention (sql/functions/13_retention.sql).
--
-- History (runs, results, steps) becomes range-partitioned by run id, so a
-- day of it can be dropped whole. Run ids are UUIDv7: a range of ids is a
-- range of creation times. What was there before stays, untouched, as one
-- partition `<table>_until_<time>` for the ids before this migration (a
-- fresh install has none);
-- `<table>_kept`, the default partition, takes the runs that outlive their
-- partition when it is dropped. Daily partitions `<table>_d<date>` (the
-- first from now to the end of the day) are added ahead by workers and by
-- `migrate` (add_partitions).

-- The retention policies that workers record: one row per function with a
-- policy, and the app's ('') for the others; a null interval keeps forever.
CREATE TABLE {schema}.retention (
    function_id text PRIMARY KEY,
    completed interval,
    failed interval,
    cancelled interval,
    skipped interval,
    audit interval,  -- the app's row only
    partition_interval interval,  -- the app's row only: how much history a partition holds
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- The partitions of history, by the suffix their three tables share.
-- `closed_rows`: its run count, taken once its range has passed (fixed then).
CREATE TABLE {schema}.history_partitions (
    suffix text PRIMARY KEY,
    lower_id uuid,  -- null: from the first id there is
    upper_id uuid NOT NULL,
    closed_rows bigint
);

-- When pruning last ran, and what it removed (the retention_status view).
CREATE TABLE {schema}.prune_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    as_of timestamptz NOT NULL,
    removed jsonb NOT NULL,
    next_due timestamptz
);

-- The events of runs started one by one (start_run: replays, batches,
-- debounces, children, failure handlers), which may be older than the run:
-- prune keeps them while the run is there (a run sent with its event is in
-- the partition of the event's day, or the next).
CREATE TABLE {schema}.event_refs (
    event_id text NOT NULL,
    run_id uuid NOT NULL,
    CONSTRAINT event_refs_pkey PRIMARY KEY (event_id, run_id)
);
CREATE INDEX event_refs_run ON {schema}.event_refs (run_id);

-- What prune reads by time: events past their dedupe window, the audit log
-- past its retention, results past theirs.
CREATE INDEX events_received ON {schema}.events (received_at);
CREATE INDEX rls_audit_log_at ON {schema}.rls_audit_log (at);
-- The rate-limit log's period, so that a key at rest can go.
ALTER TABLE {schema}.rate_limits ADD COLUMN period interval;

DO $$
DECLARE
    v_upper uuid := (lpad(to_hex((extract(epoch FROM now()) * 1000)::bigint), 12, '0')
                     || repeat('0', 20))::uuid;
    v_suffix text := 'until_' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS');
    v_history boolean := EXISTS (SELECT FROM {schema}.runs);  -- else a fresh install
    v_table text;
    v_key text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['runs', 'results', 'steps'] LOOP
        v_key := CASE v_table WHEN 'runs' THEN 'id' WHEN 'results' THEN 'run_id'
                              ELSE 'run_id, step_key' END;
        EXECUTE format('ALTER TABLE {schema}.%I RENAME TO %I', v_table, v_table || '_' || v_suffix);
        EXECUTE format('ALTER TABLE {schema}.%I RENAME CONSTRAINT %I TO %I',
                       v_table || '_' || v_suffix, v_table || '_pkey',
                       v_table || '_' || v_suffix || '_pkey');
        EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.%I INCLUDING DEFAULTS '
                       'INCLUDING CONSTRAINTS) PARTITION BY RANGE (%s)',
                       v_table, v_table || '_' || v_suffix, split_part(v_key, ',', 1));
        EXECUTE format('ALTER TABLE {schema}.%I ADD CONSTRAINT %I PRIMARY KEY (%s)',
                       v_table, v_table || '_pkey', v_key);
        IF v_history THEN
            EXECUTE format('ALTER TABLE {schema}.%I ATTACH PARTITION {schema}.%I '
                           'FOR VALUES FROM (MINVALUE) TO (%L)',
                           v_table, v_table || '_' || v_suffix, v_upper);
        ELSE
            EXECUTE format('DROP TABLE {schema}.%I', v_table || '_' || v_suffix);
        END IF;
        EXECUTE format('CREATE TABLE {schema}.%I PARTITION OF {schema}.%I DEFAULT',
                       v_table || '_kept', v_table);
    END LOOP;
    IF v_history THEN
        INSERT INTO {schema}.history_partitions (suffix, lower_id, upper_id)
        VALUES (v_suffix, NULL, v_upper);
    END IF;
END
$$;

-- The indexes move to the partitioned tables (each partition gets its own;
-- those of the old table, if it stayed, are attached as its own).
ALTER INDEX IF EXISTS {schema}.runs_first_event RENAME TO runs_first_event_old;
ALTER INDEX IF EXISTS {schema}.runs_function_created RENAME TO runs_function_created_old;
ALTER INDEX IF EXISTS {schema}.runs_many_events RENAME TO runs_many_events_old;
CREATE INDEX runs_first_event ON {schema}.runs ((event_ids[1]));
CREATE INDEX runs_function_created ON {schema}.runs (function_id, created_at DESC);
CREATE INDEX runs_many_events ON {schema}.runs USING gin (event_ids)
    WHERE cardinality(event_ids) > 1;
CREATE INDEX results_finished ON {schema}.results (finished_at);
