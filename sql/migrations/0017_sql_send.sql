-- Sending from SQL (sql/functions/15_sql_send.sql): what a send needs that
-- only the app's code knew.

-- How a function's runs start for an event, as resolve_runs reads it
-- (_functions.send_spec); null in rows written by workers older than this.
ALTER TABLE {schema}.function_registry ADD COLUMN send_spec jsonb;

-- The app's limits for events, as its workers last recorded them
-- (Durable(dedupe_window=, max_event_bytes=)); one row.
CREATE TABLE {schema}.send_settings (
    only_row        boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    dedupe_window   interval NOT NULL,
    max_event_bytes int NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
