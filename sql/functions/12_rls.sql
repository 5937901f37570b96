-- Row-level security contexts, and the grants of the least-privilege roles.

-- rls_context: in the caller's transaction, write the audit row of an
-- act-as or a bypass, then set p_setting to p_value until the transaction
-- ends (set_config(..., true) is SET LOCAL). p_setting 'role' switches to
-- a role (SET LOCAL ROLE), after the audit row is written under the
-- caller's own role. The audit row names the role the work runs as.
CREATE FUNCTION {schema}.rls_context(
    p_kind text, p_tag text, p_user text, p_run uuid, p_function text, p_step text,
    p_setting text, p_value text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.rls_audit_log
        (kind, tag, user_id, run_id, function_id, step_key, db_role)
    VALUES (p_kind, p_tag, p_user, p_run, p_function, p_step,
            CASE WHEN p_setting = 'role' THEN p_value ELSE current_user END);
    PERFORM set_config(p_setting, p_value, true);
END
$$;

CREATE VIEW {schema}.rls_audit AS
SELECT at, kind, tag, user_id, run_id, function_id, step_key, db_role
FROM {schema}.rls_audit_log;

-- apply_grants: the privileges of the roles in role_grants, on the schema's
-- objects as they are now. A worker role reads and writes pgdurable's
-- tables (not its bookkeeping of versions and roles) and calls its
-- functions; a sender role only sends events (send_events and send_batch,
-- which run with their owner's rights, and send) and reads run state (the
-- run_state view, and list_runs, which runs with its owner's rights).
CREATE FUNCTION {schema}.apply_grants() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN SELECT role_name FROM {schema}.role_grants WHERE kind = 'worker' LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '{schema}', v_role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %s TO %I',
                       '{schema}', v_role);
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %s.schema_version, '
                       '%s.schema_functions, %s.role_grants FROM %I',
                       '{schema}', '{schema}', '{schema}', v_role);
        EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %s TO %I', '{schema}', v_role);
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %s TO %I', '{schema}', v_role);
    END LOOP;
    FOR v_role IN SELECT role_name FROM {schema}.role_grants WHERE kind = 'sender' LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '{schema}', v_role);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.send_events(jsonb, jsonb, interval), '
                       '%s.send_batch(jsonb), %s.send(text, jsonb, text, timestamptz) TO %I',
                       '{schema}', '{schema}', '{schema}', v_role);
        EXECUTE format('GRANT SELECT ON %s.run_state TO %I', '{schema}', v_role);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.list_runs(text, text, text, uuid, uuid, '
                       'uuid, uuid, int) TO %I', '{schema}', v_role);
    END LOOP;
END
$$;

-- create_roles: create the two roles (NOLOGIN; grant them to your login
-- roles) unless they exist, remember them, and grant them their privileges.
-- Run it as the role that runs the migrations.
CREATE FUNCTION {schema}.create_roles(
    p_sender text DEFAULT 'pgdurable_sender', p_worker text DEFAULT 'pgdurable_worker'
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY[p_sender, p_worker] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
    INSERT INTO {schema}.role_grants VALUES (p_sender, 'sender'), (p_worker, 'worker')
    ON CONFLICT (role_name) DO UPDATE SET kind = excluded.kind;
    PERFORM {schema}.apply_grants();
END
$$;

-- send_events runs with its owner's rights, so that a sender role needs no
-- privilege on the tables it writes; nobody else may call it unless granted.
ALTER FUNCTION {schema}.send_events(jsonb, jsonb, interval)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION {schema}.send_events(jsonb, jsonb, interval) FROM PUBLIC;
