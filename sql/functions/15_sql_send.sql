-- Sending from SQL: send() and send_batch() for any session with the
-- sender role (any language, psql, a migration), and triggers that send an
-- event for each row a write touches, in the writer's transaction. They
-- resolve runs as an app's own sends do (resolve_runs), from the registry
-- that workers record (registry_specs): a function no worker has recorded
-- yet is not known here, and starts no run.

-- registry_specs: the specs (see resolve_runs) of the functions recorded
-- for these event names.
CREATE FUNCTION {schema}.registry_specs(p_names text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_old text;
    v_specs jsonb;
BEGIN
    SELECT f.function_id INTO v_old FROM {schema}.function_registry f
    WHERE f.events && p_names AND f.send_spec IS NULL LIMIT 1;
    IF v_old IS NOT NULL THEN
        RAISE EXCEPTION 'function % was recorded by a worker too old to say how its runs start',
            quote_literal(v_old)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Restart the workers that serve it with this version of pgdurable.';
    END IF;
    SELECT jsonb_object_agg(x.name, x.specs) INTO v_specs FROM (
        SELECT e.name, jsonb_agg(f.send_spec ORDER BY f.function_id) AS specs
        FROM {schema}.function_registry f CROSS JOIN LATERAL unnest(f.events) AS e(name)
        WHERE e.name = ANY(p_names) GROUP BY e.name) x;
    RETURN coalesce(v_specs, '{}');
END
$$;

-- check_event_name: refuse an event name that Python's send would refuse
-- (_events.check_name).
CREATE FUNCTION {schema}.check_event_name(p_name jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF jsonb_typeof(p_name) IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'event name must be a string, not %', coalesce(jsonb_typeof(p_name), 'missing')
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF btrim(p_name #>> '{}') = '' THEN
        RAISE EXCEPTION 'event name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    ELSIF length(p_name #>> '{}') > 256 THEN
        RAISE EXCEPTION 'event name %... is longer than 256 characters',
            quote_literal(left(p_name #>> '{}', 40)) USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- checked_event: one event of send_batch ({name, data, id, ts}) checked as
-- Python's send checks it (_events.prepare), as send_events takes it; its
-- id generated if it has none. p_max_bytes bounds its data as JSON text.
CREATE FUNCTION {schema}.checked_event(p_event jsonb, p_max_bytes int) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_name text;
    v_data jsonb := nullif(p_event -> 'data', 'null');
    v_id jsonb := nullif(p_event -> 'id', 'null');
    v_ts jsonb := nullif(p_event -> 'ts', 'null');
    v_unknown text;
    v_size int;
BEGIN
    IF jsonb_typeof(p_event) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'an event must be a JSON object {name, data, id, ts}, not %',
            coalesce(jsonb_typeof(p_event), 'null') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM {schema}.check_event_name(p_event -> 'name');
    v_name := quote_literal(p_event ->> 'name');
    SELECT string_agg(quote_literal(k), ', ') INTO v_unknown
    FROM jsonb_object_keys(p_event) AS k WHERE k NOT IN ('name', 'data', 'id', 'ts');
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'event % has unknown fields %', v_name, v_unknown
            USING ERRCODE = 'invalid_parameter_value', HINT = 'An event has name, data, id and ts.';
    END IF;
    IF v_data IS NOT NULL AND jsonb_typeof(v_data) <> 'object' THEN
        RAISE EXCEPTION 'data of event % must be a JSON object, not %', v_name, jsonb_typeof(v_data)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_size := octet_length(v_data::text);
    IF v_size > p_max_bytes THEN
        RAISE EXCEPTION 'data of event % is % bytes of JSON, over the limit of % bytes',
            v_name, v_size, p_max_bytes
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Store large payloads elsewhere and send a reference to them.';
    END IF;
    IF v_id IS NOT NULL AND (jsonb_typeof(v_id) <> 'string' OR v_id #>> '{}' = ''
                             OR length(v_id #>> '{}') > 256) THEN
        RAISE EXCEPTION 'id of event % must be a non-empty string of at most 256 characters', v_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF starts_with(v_id #>> '{}', 'pgdurable:') THEN
        RAISE EXCEPTION 'id of event % starts with ''pgdurable:'', which is reserved for the ids '
                        'pgdurable generates', v_name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_ts IS NOT NULL THEN
        BEGIN
            v_ts := to_jsonb((v_ts #>> '{}')::timestamptz);
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
            RAISE EXCEPTION 'ts of event % is not a timestamp: %', v_name, v_ts
                USING ERRCODE = 'invalid_parameter_value';
        END;
    END IF;
    RETURN jsonb_build_array(coalesce(v_id, to_jsonb({schema}.uuid_v7()::text)), p_event -> 'name',
                             coalesce(v_data, '{}'), v_ts, NULL);
END
$$;

-- plain_event: whether checked_event would take p_event as it is (no
-- ts to read, nothing to refuse): most events, checked without a call.
CREATE FUNCTION {schema}.plain_event(p_event jsonb, p_max_bytes int) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(p_event) <> 'object' THEN false ELSE
        jsonb_typeof(p_event -> 'name') = 'string'
        AND length(p_event ->> 'name') <= 256 AND btrim(p_event ->> 'name') <> ''
        AND p_event - ARRAY['name', 'data', 'id', 'ts'] = '{}'
        AND coalesce(jsonb_typeof(p_event -> 'data') IN ('object', 'null'), true)
        AND coalesce(octet_length((p_event -> 'data')::text) <= p_max_bytes, true)
        AND coalesce(jsonb_typeof(p_event -> 'ts') = 'null', true)
        AND coalesce(jsonb_typeof(p_event -> 'id') = 'null' OR (
            jsonb_typeof(p_event -> 'id') = 'string' AND length(p_event ->> 'id') BETWEEN 1 AND 256
            AND NOT starts_with(p_event ->> 'id', 'pgdurable:')), true) END;
$$;

-- send_batch: send events [{name, data, id, ts}, ...] as app.send does:
-- checked (all before anything is written), stored (an id already stored
-- is a duplicate, and starts nothing), their runs created from the
-- registry, one NOTIFY. Returns their ids, in order.
CREATE FUNCTION {schema}.send_batch(events jsonb) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_settings record;
    v_max_bytes int;
    v_events jsonb;
    v_given_ids boolean;
    v_ids text[];
BEGIN
    IF jsonb_typeof(events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of {name, data, id, ts} objects, not %',
            coalesce(jsonb_typeof(events), 'null') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.dedupe_window, s.max_event_bytes INTO v_settings FROM {schema}.send_settings s;
    v_max_bytes := coalesce(v_settings.max_event_bytes, 1048576);  -- Durable's default
    SELECT jsonb_agg(CASE WHEN {schema}.plain_event(e, v_max_bytes) THEN jsonb_build_array(
                         coalesce(nullif(e -> 'id', 'null'), to_jsonb({schema}.uuid_v7()::text)),
                         e -> 'name', coalesce(nullif(e -> 'data', 'null'), '{}'), NULL, NULL)
                     ELSE {schema}.checked_event(e, v_max_bytes) END ORDER BY n),
           bool_or(nullif(e -> 'id', 'null') IS NOT NULL)
    INTO v_events, v_given_ids
    FROM jsonb_array_elements(events) WITH ORDINALITY AS x(e, n);
    IF v_events IS NULL THEN
        RETURN '{}';
    END IF;
    v_ids := ARRAY(SELECT e ->> 0 FROM jsonb_array_elements(v_events) e);
    IF v_given_ids THEN  -- the first of each id, as Python's send keeps it
        SELECT jsonb_agg(e ORDER BY n) INTO v_events FROM (
            SELECT e, n, row_number() OVER (PARTITION BY e ->> 0 ORDER BY n) AS nth
            FROM jsonb_array_elements(v_events) WITH ORDINALITY AS x(e, n)) x WHERE nth = 1;
    END IF;
    IF (SELECT s.due FROM {schema}.store_events(
            v_events,
            {schema}.registry_specs(ARRAY(SELECT DISTINCT e ->> 1 FROM jsonb_array_elements(v_events) e)),
            coalesce(v_settings.dedupe_window, interval '24 hours')) s) THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN v_ids;
END
$$;

-- send: one event; returns its id.
CREATE FUNCTION {schema}.send(name text, data jsonb DEFAULT '{}', id text DEFAULT NULL,
                              ts timestamptz DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
    SELECT ({schema}.send_batch(jsonb_build_array(jsonb_build_object(
        'name', name, 'data', data, 'id', id, 'ts', ts))))[1];
$$;

-- Event triggers. Inserts and deletes send their rows' events once per
-- statement, from its transition table; an update, per row (its old and
-- new row paired). The trigger functions run with the writer's rights: its
-- role needs the sender role (send_batch), nothing more.
--   args: event name, the columns to send as a JSON array ('' for all),
--   and (per statement) the condition ('' for none).

-- row_data: a row as an event trigger sends it: only p_columns, if given.
CREATE FUNCTION {schema}.row_data(p_row jsonb, p_columns jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_columns IS NULL THEN p_row ELSE (
        SELECT coalesce(jsonb_object_agg(r.k, r.v), '{}') FROM jsonb_each(p_row) AS r(k, v)
        WHERE p_columns ? r.k) END;
$$;

CREATE FUNCTION {schema}.statement_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_alias text := CASE TG_OP WHEN 'INSERT' THEN 'new' ELSE 'old' END;
    v_events jsonb;
BEGIN
    EXECUTE format(
        'SELECT jsonb_agg(jsonb_build_object(''name'', $1, ''data'', jsonb_build_object('
        '''op'', $2, ''table'', $3, %L, %s))) FROM %I AS %I WHERE %s',
        v_alias, {schema}.row_json(v_alias, nullif(TG_ARGV[1], '')::jsonb),
        'pgdurable_' || v_alias, v_alias, coalesce(nullif(TG_ARGV[2], ''), 'true'))
    INTO v_events
    USING TG_ARGV[0], lower(TG_OP), format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    IF v_events IS NOT NULL THEN
        PERFORM {schema}.send_batch(v_events);
    END IF;
    RETURN NULL;
END
$$;

-- row_json: the SQL expression of a row (p_alias) as an event trigger
-- sends it: the whole row, or only p_columns (a JSON array of names).
CREATE FUNCTION {schema}.row_json(p_alias text, p_columns jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_columns IS NULL THEN format('to_jsonb(%I)', p_alias)
                ELSE format('jsonb_build_object(%s)', (
                    SELECT string_agg(format('%L, %I.%I', c, p_alias, c), ', ' ORDER BY n)
                    FROM jsonb_array_elements_text(p_columns) WITH ORDINALITY AS x(c, n))) END;
$$;

CREATE FUNCTION {schema}.row_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_columns jsonb := nullif(TG_ARGV[1], '')::jsonb;
BEGIN
    PERFORM {schema}.send_batch(jsonb_build_array(jsonb_build_object(
        'name', TG_ARGV[0], 'data', jsonb_build_object(
            'op', lower(TG_OP), 'table', format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME),
            'old', {schema}.row_data(to_jsonb(OLD), v_columns),
            'new', {schema}.row_data(to_jsonb(NEW), v_columns)))));
    RETURN NULL;
END
$$;

-- event_trigger_name: the trigger sending p_event for p_op ('insert',
-- 'update' or 'delete') writes; unique per pgdurable schema and event.
CREATE FUNCTION {schema}.event_trigger_name(p_event text, p_op text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('%s_%s_%s', '{channel}', p_op, left(md5(p_event), 12));
$$;

-- create_event_trigger: send event_name, with the row as data, for each row
-- of table_name that a write (ops) touches and that `condition` holds for
-- (an SQL expression over NEW, and OLD for updates and deletes), in the
-- writer's transaction. data is {op, table, new, old}, the rows restricted
-- to `columns` if given. Replaces the table's triggers for that event.
CREATE FUNCTION {schema}.create_event_trigger(
    table_name regclass, event_name text, ops text[] DEFAULT ARRAY['insert'],
    columns text[] DEFAULT NULL, condition text DEFAULT NULL
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_op text;
    v_missing text;
    v_columns text := coalesce(to_jsonb(columns)::text, '');
BEGIN
    PERFORM {schema}.check_event_name(to_jsonb(event_name));
    IF coalesce(cardinality(ops), 0) = 0 OR NOT ops <@ ARRAY['insert', 'update', 'delete'] THEN
        RAISE EXCEPTION 'ops must name one or more of insert, update and delete, not %', ops
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(quote_literal(c), ', ') INTO v_missing FROM unnest(columns) AS c
    WHERE NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = table_name AND a.attname = c
                      AND a.attnum > 0 AND NOT a.attisdropped);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'table % has no column %', table_name, v_missing
            USING ERRCODE = 'undefined_column';
    END IF;
    PERFORM {schema}.drop_event_trigger(table_name, event_name);
    FOREACH v_op IN ARRAY ARRAY(SELECT DISTINCT o FROM unnest(ops) AS o) LOOP
        IF v_op = 'update' THEN
            EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW %s '
                           'EXECUTE FUNCTION {schema}.row_event(%L, %L)',
                           {schema}.event_trigger_name(event_name, v_op), table_name,
                           CASE WHEN condition IS NULL THEN '' ELSE format('WHEN (%s)', condition) END,
                           event_name, v_columns);
        ELSE
            IF condition IS NOT NULL THEN  -- refused now rather than at the first write
                EXECUTE format('SELECT FROM %s AS %I WHERE %s LIMIT 0', table_name,
                               CASE v_op WHEN 'insert' THEN 'new' ELSE 'old' END, condition);
            END IF;
            EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s TABLE AS %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION {schema}.statement_event(%L, %L, %L)',
                           {schema}.event_trigger_name(event_name, v_op), upper(v_op), table_name,
                           CASE v_op WHEN 'insert' THEN 'NEW' ELSE 'OLD' END,
                           CASE v_op WHEN 'insert' THEN 'pgdurable_new' ELSE 'pgdurable_old' END,
                           event_name, v_columns, coalesce(condition, ''));
        END IF;
    END LOOP;
END
$$;

-- drop_event_trigger: the triggers create_event_trigger made on table_name
-- for event_name go (none is no error).
CREATE FUNCTION {schema}.drop_event_trigger(table_name regclass, event_name text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_op text;
BEGIN
    FOREACH v_op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
                       {schema}.event_trigger_name(event_name, v_op), table_name);
    END LOOP;
END
$$;

-- event_triggers: the event triggers of this schema, on every table.
CREATE VIEW {schema}.event_triggers AS
SELECT t.tgrelid::regclass AS table_name, a.args[1] AS event_name,
       lower(CASE WHEN t.tgtype & 4 <> 0 THEN 'insert' WHEN t.tgtype & 8 <> 0 THEN 'delete'
                  ELSE 'update' END) AS op,
       nullif(a.args[2], '')::jsonb AS columns,
       CASE WHEN t.tgfoid = '{schema}.row_event'::regproc
            THEN substring(pg_get_triggerdef(t.oid) FROM 'WHEN \((.*)\) EXECUTE')
            ELSE nullif(a.args[3], '') END AS condition
FROM pg_trigger t
CROSS JOIN LATERAL (SELECT string_to_array(encode(t.tgargs, 'escape'), '\000')) AS a(args)
WHERE t.tgfoid IN ('{schema}.row_event'::regproc, '{schema}.statement_event'::regproc);

-- send_batch runs with its owner's rights, as send_events does, so that a
-- sender role (or a trigger's writer) needs no privilege on the tables.
ALTER FUNCTION {schema}.send_batch(jsonb) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION {schema}.send_batch(jsonb) FROM PUBLIC;
