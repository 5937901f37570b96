-- What a list of runs (list_runs, the CLI, the dashboard) walks, newest
-- first: each filter has an index in run id order, so a page reads about a
-- page of rows however much history there is (see list_runs).

-- By function: in id order (the keyset of every listing), not created_at.
DROP INDEX {schema}.runs_function_created;
CREATE INDEX runs_function_id ON {schema}.runs (function_id, id);
-- The children of a run (invoke), and its forks: few runs have either.
CREATE INDEX runs_parent ON {schema}.runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_forked_from ON {schema}.runs (forked_from) WHERE forked_from IS NOT NULL;
-- The runs that ended other than completed, by status: what operators look
-- for, and rare enough that the index costs the hot path little.
CREATE INDEX results_not_completed ON {schema}.results (status, run_id) WHERE status <> 'completed';
