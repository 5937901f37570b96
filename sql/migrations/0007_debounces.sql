-- debounce=: one pending run per (function, key), started with the latest
-- event at `due_at` (pushed back by each new event, never past `deadline`).
CREATE TABLE {schema}.debounces (
    function_id text NOT NULL,
    key         text NOT NULL,
    event_id    text NOT NULL,
    retries     int NOT NULL,
    due_at      timestamptz NOT NULL,
    deadline    timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX debounces_due ON {schema}.debounces (due_at);
