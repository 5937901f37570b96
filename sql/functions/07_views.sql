-- The state of a run, and the monitoring views (a public interface, documented
-- in the README).

-- A run as the management API and the views see it: live state from the
-- queue while unfinished, the permanent record otherwise.
CREATE VIEW {schema}.run_state AS
SELECT r.id, r.function_id, coalesce(res.status, q.status, 'queued') AS status, res.output,
       coalesce(res.error, q.error) AS error, coalesce(res.attempt, q.attempt, 0) AS attempt,
       r.event_ids, r.parent_run_id, r.created_at,
       coalesce(res.started_at, q.started_at) AS started_at, res.finished_at,
       res.worker_id, e.name AS event_name, r.forked_from
FROM {schema}.runs r
LEFT JOIN {schema}.queue q ON q.run_id = r.id
LEFT JOIN {schema}.results res ON res.run_id = r.id
-- by its primary key, and only where event_name is read: the planner drops
-- the join from queries that do not
LEFT JOIN {schema}.events e ON e.id = r.event_ids[1];

-- list_runs: the runs app.list_runs selects, newest first by id: below
-- p_before, from p_from (ids of times), up to p_limit. The ids are walked
-- in the index of the most selective filter given (a parent, a fork source,
-- an event id, a status other than completed, a function; else all runs),
-- in id order behind a fence (OFFSET 0), so that each is joined to its
-- run and checked against the other filters only until the page is full:
-- a page reads about a page of that index when the other filters are
-- common, and as far as it takes when they are rare (a function with few
-- failures, say). An event name (not an id) has no index of its own: it is
-- checked run by run as another filter's index, or all runs, are walked.
CREATE FUNCTION {schema}.list_runs(
    p_function text, p_status text, p_event text, p_parent uuid, p_fork_of uuid,
    p_from uuid, p_before uuid, p_limit int
) RETURNS SETOF {schema}.run_state LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_event_id boolean := EXISTS (SELECT FROM {schema}.events e WHERE e.id = p_event);
    v_walk text;
    v_by text;  -- the filter the walk already applies
BEGIN
    IF p_parent IS NOT NULL THEN
        v_by := 'parent';
        v_walk := 'SELECT id FROM {schema}.runs WHERE parent_run_id = $4';
    ELSIF p_fork_of IS NOT NULL THEN
        v_by := 'fork';
        v_walk := 'SELECT id FROM {schema}.runs WHERE forked_from = $5';
    ELSIF v_event_id THEN
        v_by := 'event';
        v_walk := 'SELECT id FROM {schema}.runs WHERE event_ids[1] = $3 UNION '
                  'SELECT id FROM {schema}.runs WHERE cardinality(event_ids) > 1 '
                  'AND event_ids @> ARRAY[$3]';
    ELSIF p_status IN ('failed', 'cancelled', 'skipped') THEN  -- results_not_completed
        v_by := 'status';
        v_walk := 'SELECT run_id AS id FROM {schema}.results '
                  'WHERE status = $2 AND status <> ''completed''';
    ELSIF p_status IN ('queued', 'running', 'sleeping', 'waiting') THEN
        v_by := 'status';
        v_walk := 'SELECT run_id AS id FROM {schema}.queue WHERE status = $2';
    ELSIF p_function IS NOT NULL THEN
        v_by := 'function';
        v_walk := 'SELECT id FROM {schema}.runs WHERE function_id = $1';
    ELSE
        v_by := '';
        v_walk := 'SELECT id FROM {schema}.runs';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT s.* FROM (SELECT w.id FROM (%s) w WHERE w.id >= $6 AND w.id < $7
                          ORDER BY w.id DESC OFFSET 0) w
         JOIN {schema}.run_state s ON s.id = w.id
         WHERE %s ORDER BY w.id DESC LIMIT $8',
        v_walk, concat_ws(' AND ', 'true',
            CASE WHEN p_function IS NOT NULL AND v_by <> 'function' THEN 's.function_id = $1' END,
            CASE WHEN p_status IS NOT NULL AND v_by <> 'status' THEN 's.status = $2' END,
            CASE WHEN p_event IS NOT NULL AND NOT v_event_id THEN 's.event_name = $3' END,
            CASE WHEN p_parent IS NOT NULL AND v_by <> 'parent' THEN 's.parent_run_id = $4' END,
            CASE WHEN p_fork_of IS NOT NULL AND v_by <> 'fork' THEN 's.forked_from = $5' END))
    USING p_function, p_status, p_event, p_parent, p_fork_of,
          coalesce(p_from, '00000000-0000-0000-0000-000000000000'),
          coalesce(p_before, 'ffffffff-ffff-ffff-ffff-ffffffffffff'), p_limit;
END
$$;

-- It reads only what run_state shows, so it runs with its owner's rights
-- for the roles that may read that view (the sender role: apply_grants).
ALTER FUNCTION {schema}.list_runs(text, text, text, uuid, uuid, uuid, uuid, int)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION {schema}.list_runs(text, text, text, uuid, uuid, uuid, uuid, int)
    FROM PUBLIC;

-- count_runs: runs created from p_since, by function and status, counting
-- at most the newest p_cap (the dashboard's overview: a bounded read
-- however busy the app is). Each run's state is looked up by key: with a
-- few thousand runs in the window the planner would rather hash whole
-- partitions of results, which costs more the bigger they are.
CREATE FUNCTION {schema}.count_runs(p_since timestamptz, p_cap int)
RETURNS TABLE (function_id text, status text, runs bigint) LANGUAGE sql STABLE
SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $$
    SELECT s.function_id, s.status, count(*)
    FROM (SELECT r.function_id, r.status FROM {schema}.run_state r
          WHERE r.id >= {schema}.uuid_at(p_since)
          ORDER BY r.id DESC LIMIT p_cap) s
    GROUP BY s.function_id, s.status;
$$;

CREATE VIEW {schema}.function_status AS
SELECT function_id, status, count(*) AS runs
FROM {schema}.run_state GROUP BY function_id, status;

CREATE VIEW {schema}.queue_depth AS
SELECT function_id,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'queued' AND available_at <= now()) AS ready,
       count(*) FILTER (WHERE status = 'running') AS running,
       now() - min(available_at) FILTER (WHERE status = 'queued' AND available_at <= now())
           AS oldest_ready_age
FROM {schema}.queue
GROUP BY function_id;

CREATE VIEW {schema}.recent_failures AS
SELECT res.run_id, r.function_id, r.event_ids, res.attempt, res.finished_at,
       res.error ->> 'type' AS error_type, res.error ->> 'message' AS error_message,
       res.error ->> 'traceback' AS traceback
FROM {schema}.results res JOIN {schema}.runs r ON r.id = res.run_id
WHERE res.status = 'failed'
ORDER BY res.finished_at DESC;

CREATE VIEW {schema}.step_timeline AS
SELECT s.run_id, r.function_id, s.position, s.step_key, s.status, s.attempts,
       s.started_at, s.finished_at, s.finished_at - s.started_at AS duration,
       s.error ->> 'type' AS error_type, s.error ->> 'message' AS error_message
FROM {schema}.steps s JOIN {schema}.runs r ON r.id = s.run_id;

CREATE VIEW {schema}.unmatched_events AS
SELECT e.id, e.name, e.received_at
FROM {schema}.events e
WHERE NOT EXISTS (SELECT FROM {schema}.runs r
                  WHERE r.event_ids[1] = e.id OR (cardinality(r.event_ids) > 1
                                                  AND r.event_ids @> ARRAY[e.id]));
