-- Row-level security contexts and least-privilege roles.

-- Every act-as and every bypass (ctx.as_user, ctx.rls_bypass): written in
-- the transaction it covers, so it commits or rolls back with that work.
-- Read through the view rls_audit.
CREATE TABLE {schema}.rls_audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind        text NOT NULL CHECK (kind IN ('as_user', 'bypass')),
    tag         text,
    user_id     text,
    run_id      uuid,
    function_id text,
    step_key    text,
    db_role     text NOT NULL
);
CREATE INDEX rls_audit_log_run ON {schema}.rls_audit_log (run_id) WHERE run_id IS NOT NULL;

-- The roles that create_roles() set up, so that apply_grants() can grant
-- them again whenever the functions and views are recreated (an upgrade
-- drops them, and their grants with them).
CREATE TABLE {schema}.role_grants (
    role_name text PRIMARY KEY,
    kind      text NOT NULL CHECK (kind IN ('sender', 'worker'))
);
