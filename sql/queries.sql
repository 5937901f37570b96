-- Every statement pgdurable runs, by name; pgdurable/_store.py loads them.
-- `{schema}` is replaced by the quoted schema name; parameters use psycopg's
-- %s / %(name)s placeholders.

-- name: migration_lock
SELECT pg_advisory_xact_lock(hashtext('pgdurable.migrate'), hashtext(%s));

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: create_version_table
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: create_functions_table
CREATE TABLE IF NOT EXISTS {schema}.schema_functions (
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: add_functions_revision
-- The revision of the library that wrote the functions (sql/functions/REVISION).
ALTER TABLE {schema}.schema_functions ADD COLUMN IF NOT EXISTS revision int;

-- name: functions_checksum
SELECT checksum FROM {schema}.schema_functions;

-- name: functions_revision
-- Null where an older library created the table without the column.
SELECT (to_jsonb(f) ->> 'revision')::int FROM {schema}.schema_functions f;

-- name: record_functions
WITH gone AS (DELETE FROM {schema}.schema_functions)
INSERT INTO {schema}.schema_functions (checksum, revision) VALUES (%s, %s);

-- name: drop_functions
-- Each statement is written before any runs: a DROP ... CASCADE may take
-- others of the list with it (a function returning a view's rows goes with
-- the view), whose names could no longer be read then.
DO $$
DECLARE
    v_ddl text;
BEGIN
    FOREACH v_ddl IN ARRAY ARRAY(
        SELECT d.ddl FROM (
            SELECT 1 AS rank, format('DROP VIEW IF EXISTS %s CASCADE', c.oid::regclass) AS ddl
            FROM pg_class c WHERE c.relnamespace = '{schema}'::regnamespace AND c.relkind = 'v'
            UNION ALL
            SELECT 2, format('DROP FUNCTION IF EXISTS %s CASCADE', p.oid::regprocedure)
            FROM pg_proc p WHERE p.pronamespace = '{schema}'::regnamespace
            UNION ALL  -- after the functions that return them
            SELECT 3, format('DROP TYPE IF EXISTS %s CASCADE', c.reltype::regtype)
            FROM pg_class c WHERE c.relnamespace = '{schema}'::regnamespace AND c.relkind = 'c'
        ) d ORDER BY d.rank)
    LOOP
        EXECUTE v_ddl;
    END LOOP;
END
$$;

-- name: applied_versions
SELECT version FROM {schema}.schema_version ORDER BY version;

-- name: record_version
INSERT INTO {schema}.schema_version (version, name) VALUES (%s, %s);

-- name: schema_exists
SELECT to_regclass(%s) IS NOT NULL;

-- name: send_events
SELECT FROM {schema}.send_events(%s::jsonb, %s::jsonb, %s::interval);

-- name: send_generated
SELECT FROM {schema}.send_generated(%s::jsonb, %s::jsonb, %s::interval);

-- name: send_and_claim
SELECT * FROM {schema}.send_and_claim(%s::jsonb, %s::jsonb, %s::interval, %s, %s::text[], %s,
                                      %s::interval);

-- name: claim_runs
SELECT * FROM {schema}.claim_runs(%s, %s::text[], %s, %s::interval, %s::timestamptz);

-- name: flush
SELECT * FROM {schema}.flush(%s::jsonb, %s::jsonb, %s::uuid[], %s::bigint[]);

-- name: hold_run
-- A transactional step's first statement: whether the run is still this
-- claim's (and whether it was asked to cancel), and if so a KEY SHARE lock
-- on its queue row until the step's transaction ends. Claims (FOR UPDATE
-- SKIP LOCKED) pass the run by meanwhile, so no other worker takes it over
-- mid-step; heartbeats (NO KEY UPDATE) go on extending its lease; a cancel
-- waits for the step and is seen at the next boundary.
SELECT cancel_requested FROM {schema}.queue
WHERE run_id = %s AND lease_token = %s AND status = 'running'
FOR KEY SHARE;

-- name: session_settings
-- On a connection of pgdurable's own straight to Postgres: the server's end
-- of the keepalives (see _network.py), so that the session of a client
-- whose network path died ends in seconds and releases its locks; and where
-- `bounded`, limits on pgdurable's own statements that none of them comes
-- near (a transaction that runs user code lifts them: `unbounded`).
SELECT set_config('tcp_keepalives_idle', %(idle)s, false),
       set_config('tcp_keepalives_interval', %(interval)s, false),
       set_config('tcp_keepalives_count', %(count)s, false),
       set_config('tcp_user_timeout', %(user_timeout)s, false),
       set_config('statement_timeout', CASE WHEN %(bounded)s THEN '5min'
                  ELSE current_setting('statement_timeout') END, false),
       set_config('lock_timeout', CASE WHEN %(bounded)s THEN '1min'
                  ELSE current_setting('lock_timeout') END, false),
       set_config('idle_in_transaction_session_timeout', CASE WHEN %(bounded)s THEN '1min'
                  ELSE current_setting('idle_in_transaction_session_timeout') END, false);

-- name: unbounded
-- User code runs in this transaction (a transactional step, app.connection()):
-- it takes as long as it takes, under the limits the database itself sets.
SET LOCAL statement_timeout TO DEFAULT;
SET LOCAL lock_timeout TO DEFAULT;
SET LOCAL idle_in_transaction_session_timeout TO DEFAULT;

-- name: reset_role
SELECT set_config('role', 'none', true);

-- name: rls_context
SELECT FROM {schema}.rls_context(%s, %s, %s, %s::uuid, %s, %s, %s, %s);

-- name: create_roles
SELECT FROM {schema}.create_roles(%s, %s);

-- name: heartbeat
SELECT * FROM {schema}.heartbeat(%s::uuid[], %s::bigint[], %s::interval);

-- name: cancel_run
SELECT {schema}.cancel_run(%s::uuid);

-- name: cancel_runs
SELECT {schema}.cancel_runs(%(function)s, %(since)s, %(until)s, %(runs)s::uuid[],
                            coalesce(%(who)s, session_user));

-- name: register_wait
SELECT * FROM {schema}.register_wait(%s::uuid, %s, %s, %s, %s::text[], %s::text[], %s::jsonb,
                                     %s::jsonpath, %s::jsonb, %s);

-- name: invoke_child
SELECT {schema}.invoke_child(%s::uuid, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s::jsonb);

-- name: next_due
SELECT {schema}.next_due(%s::text[]);

-- name: register_failure_handlers
-- The on_failure handlers of a worker's functions: its rows replace those
-- of the same functions.
WITH gone AS (
    DELETE FROM {schema}.failure_handlers
    WHERE function_id = ANY(%(functions)s::text[]) AND NOT function_id = ANY(%(handled)s::text[])
)
INSERT INTO {schema}.failure_handlers (function_id, handler_id, retries)
SELECT * FROM unnest(%(handled)s::text[], %(handlers)s::text[], %(retries)s::int[])
ON CONFLICT (function_id) DO UPDATE
    SET handler_id = excluded.handler_id, retries = excluded.retries;

-- name: register_schedules
-- The cron schedules of a worker's functions. A schedule whose expression
-- or zone changed starts again from the given next tick; an unchanged one
-- keeps its own (which may be past: catch-up decides then).
WITH gone AS (
    DELETE FROM {schema}.schedules
    WHERE function_id = ANY(%(functions)s::text[]) AND NOT function_id = ANY(%(scheduled)s::text[])
)
INSERT INTO {schema}.schedules AS s (function_id, cron, timezone, next_tick)
SELECT * FROM unnest(%(scheduled)s::text[], %(crons)s::text[], %(zones)s::text[],
                     %(next_ticks)s::timestamptz[])
ON CONFLICT (function_id) DO UPDATE
    SET cron = excluded.cron, timezone = excluded.timezone, next_tick = excluded.next_tick
    WHERE s.cron <> excluded.cron OR s.timezone <> excluded.timezone;

-- name: due_schedules
-- Schedules due now, locked for this transaction; one another worker is
-- handling is skipped.
SELECT function_id, next_tick, now() FROM {schema}.schedules
WHERE function_id = ANY(%s::text[]) AND next_tick <= now()
ORDER BY function_id
FOR UPDATE SKIP LOCKED;

-- name: set_next_tick
UPDATE {schema}.schedules SET next_tick = %s WHERE function_id = %s;

-- name: next_tick
SELECT min(next_tick) FROM {schema}.schedules WHERE function_id = ANY(%s::text[]);

-- name: start_due_batches
SELECT {schema}.start_due_batches(%s::text[]);

-- name: start_due_debounces
SELECT {schema}.start_due_debounces(%s::text[], %s::interval);

-- name: get_run
SELECT id, function_id, status, output, error, attempt, event_ids, parent_run_id,
       created_at, started_at, finished_at, forked_from
FROM {schema}.run_state WHERE id = %s::uuid;

-- name: runs_for_event
SELECT id, function_id, status, output, error, attempt, event_ids, parent_run_id,
       created_at, started_at, finished_at, forked_from
FROM {schema}.run_state
WHERE event_ids[1] = %(event)s OR (cardinality(event_ids) > 1 AND event_ids @> ARRAY[%(event)s])
ORDER BY created_at, id;

-- name: list_runs
-- Newest first by id (UUIDv7: time-ordered), a page at a time: `after` is
-- the last id of the page before. since/until bound the ids, which are the
-- partitions' key, so only the partitions of that time are read.
SELECT id, function_id, status, output, error, attempt, event_ids, parent_run_id,
       created_at, started_at, finished_at, forked_from
FROM {schema}.list_runs(%(function)s, %(status)s, %(event)s, %(parent)s::uuid, %(fork_of)s::uuid,
                        {schema}.uuid_at(%(since)s::timestamptz),
                        least(%(after)s::uuid, {schema}.uuid_at(%(until)s::timestamptz)),
                        %(limit)s);

-- name: replay_run
-- Without options (the function's code is not loaded): those the run was started with.
SELECT {schema}.start_run(function_id, event_ids, %(retries)s, parent_run_id,
                         coalesce(%(options)s::jsonb, options)),
       pg_notify('{channel}', '')
FROM {schema}.runs WHERE id = %(run)s::uuid;

-- name: fork_run
SELECT {schema}.fork_run(%(run)s::uuid, %(from_step)s, %(retries)s, %(options)s::jsonb,
                         %(event)s::jsonb);

-- name: audit
SELECT FROM {schema}.audit(%(action)s, %(runs)s::uuid[], coalesce(%(who)s, session_user),
                           %(details)s::jsonb[]);

-- name: registered_retries
SELECT retries FROM {schema}.function_registry WHERE function_id = %s;

-- name: event
SELECT {schema}.event_doc(e) FROM {schema}.events e WHERE e.id = %s;

-- name: list_events
-- Newest first by arrival, a page at a time: `after` is the last id of the
-- page before (an unknown one ends the list).
SELECT {schema}.event_doc(e) FROM {schema}.events e
WHERE (%(name)s::text IS NULL OR e.name = %(name)s)
  AND e.received_at >= coalesce(%(since)s::timestamptz, '-infinity')
  AND e.received_at < coalesce(%(until)s::timestamptz, 'infinity')
  AND (%(after)s::text IS NULL
       OR (e.received_at, e.id) < (SELECT a.received_at, a.id FROM {schema}.events a
                                   WHERE a.id = %(after)s))
ORDER BY e.received_at DESC, e.id DESC
LIMIT %(limit)s;

-- name: notify_migrated
SELECT pg_notify('{channel}', 'migrated');

-- name: listen
LISTEN {channel_ident};

-- name: barrier
SELECT;

-- The schema as DDL, read back from the catalogs (Store.schema_ddl; the
-- source of sql/schema.sql). Each returns (sort key, DDL text) rows.

-- name: ddl_tables
SELECT c.relname, format(E'CREATE TABLE %%I.%%I (\n%%s\n)%%s;', n.nspname, c.relname, concat_ws(E',\n',
    (SELECT string_agg(format('    %%I %%s%%s%%s', a.attname, format_type(a.atttypid, a.atttypmod),
                              CASE WHEN a.attnotnull THEN ' NOT NULL' END,
                              ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid)), E',\n' ORDER BY a.attnum)
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
    (SELECT string_agg(format('    CONSTRAINT %%I %%s', k.conname, pg_get_constraintdef(k.oid)),
                       E',\n' ORDER BY k.contype DESC, k.conname)
     FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype <> 'n')),
    ' PARTITION BY ' || CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition  -- partitions come and go with the days (13_retention.sql)
ORDER BY c.relname;

-- name: ddl_indexes
SELECT t.relname || ' ' || i.relname, pg_get_indexdef(x.indexrelid) || ';'
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %(schema)s AND NOT t.relispartition
  AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.conrelid = t.oid)
ORDER BY 1;

-- name: ddl_types
SELECT c.relname, format(E'CREATE TYPE %%I.%%I AS (\n%%s\n);', n.nspname, c.relname,
    (SELECT string_agg(format('    %%I %%s', a.attname, format_type(a.atttypid, a.atttypmod)),
                       E',\n' ORDER BY a.attnum)
     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind = 'c'
ORDER BY c.relname;

-- name: ddl_views
SELECT c.relname, format(E'CREATE VIEW %%I.%%I AS\n%%s', n.nspname, c.relname,
                         pg_get_viewdef(c.oid, true))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind = 'v'
ORDER BY c.relname;

-- name: ddl_functions
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       pg_get_functiondef(p.oid) || ';'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %(schema)s
ORDER BY 1;

-- name: ddl_triggers
SELECT c.relname || ' ' || t.tgname, pg_get_triggerdef(t.oid, true) || ';'
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND NOT t.tgisinternal
ORDER BY 1;

-- name: record_retention
-- The app's policy ('') and its functions' own, as a worker or prune records them.
INSERT INTO {schema}.retention AS r
    (function_id, completed, failed, cancelled, skipped, audit, partition_interval)
SELECT * FROM unnest(%(functions)s::text[], %(completed)s::interval[], %(failed)s::interval[],
                     %(cancelled)s::interval[], %(skipped)s::interval[], %(audit)s::interval[],
                     %(partition_interval)s::interval[])
ON CONFLICT (function_id) DO UPDATE
SET completed = excluded.completed, failed = excluded.failed, cancelled = excluded.cancelled,
    skipped = excluded.skipped, audit = excluded.audit,
    partition_interval = excluded.partition_interval, recorded_at = now();

-- name: add_partitions
SELECT {schema}.add_partitions(%s);

-- name: close_partitions
SELECT {schema}.close_partitions(%s);

-- name: history_partitions
-- The partitions of history that a prune (as of then) may find expired runs in, oldest first
-- ('kept', the default one, last), and whether each is closed (its day over).
SELECT suffix, closed FROM (
    SELECT suffix, closed_rows IS NOT NULL AS closed, lower_id, false AS kept
    FROM {schema}.history_partitions
    WHERE lower_id IS NULL OR lower_id < {schema}.uuid_at(%s)
    UNION ALL SELECT 'kept', false, NULL, true
) p ORDER BY kept, lower_id NULLS FIRST;

-- name: partition_expired
SELECT total, expired FROM {schema}.partition_expired(%s, %s);

-- name: drop_partition
SELECT {schema}.drop_partition(%s, %s);

-- name: delete_expired
SELECT deleted, last_id FROM {schema}.delete_expired(%s, %s, %s, %s);

-- name: delete_events
SELECT deleted, last_at, last_id FROM {schema}.delete_events(%s, %s, %s, %s, %s);

-- name: count_events
SELECT {schema}.count_events(%s, %s);

-- name: delete_audit
SELECT {schema}.delete_audit(%s, %s);

-- name: delete_bookkeeping
SELECT keys, rate_limits FROM {schema}.delete_bookkeeping(%s);

-- name: log_prune
INSERT INTO {schema}.prune_log (started_at, as_of, removed, next_due) VALUES (%s, %s, %s, %s);

-- name: prune_lock
-- One pruner at a time across all processes (a session lock, on the pruner's connection).
SELECT CASE WHEN %s THEN pg_advisory_lock(hashtextextended('{schema}/prune', 0)) IS NOT NULL
            ELSE pg_try_advisory_lock(hashtextextended('{schema}/prune', 0)) END;

-- name: prune_unlock
SELECT pg_advisory_unlock(hashtextextended('{schema}/prune', 0));

-- name: lock_timeout
SELECT set_config('lock_timeout', %s, true);

-- name: database_now
SELECT now();

-- name: last_prune
SELECT max(finished_at) FROM {schema}.prune_log;

-- name: vacuum_cost_delay
SELECT set_config('vacuum_cost_delay', %s, false);

-- name: reset_vacuum_cost_delay
RESET vacuum_cost_delay;

-- name: vacuum_history
-- After a prune that deleted rows: their space is free for new rows again
-- (where autovacuum is off, or slow to come). Not prepared: a utility statement.
VACUUM {schema}.events, {schema}.event_refs, {schema}.rls_audit_log,
       {schema}.operator_audit_log, {schema}.run_keys,
       {schema}.rate_limits, {schema}.runs_kept, {schema}.results_kept, {schema}.steps_kept;

-- name: hot_dead_tuples
-- The hot tables this role may VACUUM (it owns them): dead and live row versions.
SELECT s.relname, s.n_dead_tup, s.n_live_tup FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE s.relid IN (to_regclass('{schema}.queue'), to_regclass('{schema}.waits'))
  AND pg_has_role(c.relowner, 'USAGE');

-- name: vacuum_queue
-- Not prepared: a utility statement. SKIP_LOCKED: another VACUUM (a
-- worker's, autovacuum) at it already.
VACUUM (SKIP_LOCKED) {schema}.queue, {schema}.waits;

-- name: register_functions
-- A worker's functions as it describes them (_registry.describe), for operators.
INSERT INTO {schema}.function_registry AS f
    (function_id, events, cron, timezone, retries, options, send_spec, worker_id)
SELECT d.id, d.events, d.cron, d.timezone, d.retries, d.options, d.send_spec, %(worker)s
FROM jsonb_to_recordset(%(functions)s::jsonb)
     AS d(id text, events text[], cron text, timezone text, retries int, options jsonb,
          send_spec jsonb)
ON CONFLICT (function_id) DO UPDATE
    SET events = excluded.events, cron = excluded.cron, timezone = excluded.timezone,
        retries = excluded.retries, options = excluded.options, send_spec = excluded.send_spec,
        worker_id = excluded.worker_id, registered_at = now();

-- name: record_send_settings
-- The app's limits for events, for sends from SQL (send_batch).
INSERT INTO {schema}.send_settings AS s (dedupe_window, max_event_bytes)
VALUES (%s, %s)
ON CONFLICT (only_row) DO UPDATE
    SET dedupe_window = excluded.dedupe_window, max_event_bytes = excluded.max_event_bytes,
        recorded_at = now();

-- name: worker_seen
-- A worker's heartbeat (its first one makes its row); rows of workers not
-- seen for a day (they died) go.
WITH dead AS (
    DELETE FROM {schema}.workers WHERE last_seen_at < now() - interval '1 day' AND %(starting)s
)
INSERT INTO {schema}.workers AS w (id, host, pid, version, functions, threads, lease, runs_held)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(functions)s, %(threads)s, %(lease)s,
        %(runs_held)s)
ON CONFLICT (id) DO UPDATE SET last_seen_at = now(), runs_held = excluded.runs_held;

-- name: worker_stopped
DELETE FROM {schema}.workers WHERE id = %s;

-- name: list_functions
SELECT f.function_id, f.events, f.cron, f.timezone, s.next_tick, f.retries, f.options,
       f.registered_at, w.last_seen_at, coalesce(w.live, 0)
FROM {schema}.function_registry f
LEFT JOIN {schema}.schedules s ON s.function_id = f.function_id
LEFT JOIN LATERAL (
    SELECT max(x.last_seen_at) AS last_seen_at,
           count(*) FILTER (WHERE x.last_seen_at >= now() - x.lease) AS live
    FROM {schema}.workers x WHERE f.function_id = ANY(x.functions)) w ON true
ORDER BY f.function_id;

-- name: list_workers
SELECT id, host, pid, version, functions, threads, runs_held, started_at, last_seen_at,
       last_seen_at >= now() - lease
FROM {schema}.workers
ORDER BY started_at, id;

-- name: run_steps
SELECT step_key, position, status, attempts, output, error, started_at, finished_at
FROM {schema}.steps WHERE run_id = %s::uuid
ORDER BY position, started_at, step_key;  -- values given in place of steps: position 0, by key

-- name: doctor_facts
-- What `doctor` judges, in one statement. Unserved: the unfinished runs of
-- each function that no live worker serves (a scan of the queue).
SELECT current_setting('synchronous_commit') AS synchronous_commit,
       current_setting('autovacuum') = 'on' AS autovacuum,
       inet_server_port() AS server_port,
       ARRAY(SELECT c.relname::text FROM pg_class c
             WHERE c.oid IN (to_regclass('{schema}.queue'), to_regclass('{schema}.waits'))
               AND c.reloptions @> ARRAY['autovacuum_enabled=false']) AS autovacuum_off_tables,
       (SELECT now() - min(q.available_at) FROM {schema}.queue q
        WHERE q.status = 'queued' AND q.available_at <= now() AND q.blocked_key IS NULL)
           AS oldest_ready_age,
       (SELECT jsonb_object_agg(u.function_id, u.runs)
        FROM (SELECT q.function_id, count(*) AS runs FROM {schema}.queue q
              WHERE NOT EXISTS (SELECT FROM {schema}.workers w
                                WHERE q.function_id = ANY(w.functions)
                                  AND w.last_seen_at >= now() - w.lease)
              GROUP BY q.function_id) u) AS unserved,
       EXISTS (SELECT FROM {schema}.retention) AS retention_recorded,
       (SELECT now() - p.next_due FROM {schema}.prune_log p ORDER BY p.id DESC LIMIT 1)
           AS prune_overdue,
       ARRAY(SELECT f.function_id FROM {schema}.function_registry f) AS recorded,
       ARRAY(SELECT f.function_id FROM {schema}.function_registry f WHERE f.send_spec IS NULL
             ORDER BY 1) AS recorded_without_spec,
       ARRAY(SELECT DISTINCT t.event_name FROM {schema}.event_triggers t
             WHERE NOT EXISTS (SELECT FROM {schema}.function_registry f
                               WHERE t.event_name = ANY(f.events)) ORDER BY 1) AS unhandled_triggers;

-- name: count_runs
SELECT * FROM {schema}.count_runs(%(since)s, %(cap)s);

-- name: queue_summary
-- Unfinished runs by function and status (of at most %(cap)s queue rows),
-- and how long the oldest run ready to start has waited (by the due index).
SELECT q.function_id, q.status, count(*),
       (SELECT now() - min(r.available_at) FROM {schema}.queue r
        WHERE r.status = 'queued' AND r.available_at <= now() AND r.blocked_key IS NULL)
FROM (SELECT function_id, status FROM {schema}.queue LIMIT %(cap)s) q
GROUP BY q.function_id, q.status;

-- name: run_waits
-- What a parked run waits for: each event a step waits for (or that
-- cancels the run), and until when (its queue row's due time).
SELECT w.step_key, w.event_name, array_to_string(w.match_path, '.'), w.match_value,
       w.condition::text, w.cancel,
       nullif(coalesce(w.expires_at, q.available_at), 'infinity')  -- a wait with no timeout: null
FROM {schema}.waits w LEFT JOIN {schema}.queue q ON q.run_id = w.run_id
WHERE w.run_id = %s::uuid
ORDER BY w.cancel, w.step_key, w.event_name;

-- name: server_port
SELECT inet_server_port();

-- name: table_exists
SELECT to_regclass(%s) IS NOT NULL;

-- name: create_event_trigger
SELECT {schema}.create_event_trigger(%s::regclass, %s, %s::text[], %s::text[], %s);

-- name: drop_event_trigger
SELECT {schema}.drop_event_trigger(%s::regclass, %s);

-- name: list_event_triggers
SELECT table_name::text, event_name, op, columns, condition FROM {schema}.event_triggers
ORDER BY 1, 2, 3;

-- name: start_test_run
SELECT {schema}.start_test_run(%s, %s::jsonb, %s, %s::jsonb, %s::jsonb);

-- name: elapse_test_run
SELECT due, stuck FROM {schema}.elapse_test_run(%s::uuid);
