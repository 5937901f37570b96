-- singleton=: the run in progress per (function, key); the row goes when
-- the run ends (trigger runs_ended).
CREATE TABLE {schema}.singletons (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      uuid NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX singletons_run ON {schema}.singletons (run_id);
