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
