-- Batches: events for a function with `batch=` wait here, per batch key,
-- until `max_size` of them are in (the send that completes a batch starts
-- its run) or the oldest has waited its timeout (`fire_at`; a worker starts
-- the run then). Taking items deletes them, so no event is in two batches.
CREATE TABLE {schema}.batch_items (
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    function_id text NOT NULL,
    batch_key   text NOT NULL,
    event_id    text NOT NULL,
    max_size    int NOT NULL,
    retries     int NOT NULL,
    fire_at     timestamptz NOT NULL,
    PRIMARY KEY (function_id, batch_key, seq)
);
CREATE INDEX batch_items_fire_at ON {schema}.batch_items (fire_at);
