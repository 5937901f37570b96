-- Last, once every function and view exists: the privileges of the roles
-- that create_roles() set up (apply_grants, in 12_rls.sql).
SELECT {schema}.apply_grants();
