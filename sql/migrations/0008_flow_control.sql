-- Flow control at claim time: concurrency slots, throttles, priorities.

-- concurrency=: per key (scoped: '<function id> <key>' or '* <key>' for
-- scope="app"), the runs holding a slot (`used`: running, between their
-- claim and their next park or end) and the slots handed to blocked runs
-- that were woken but not claimed yet (`reserved`). The row goes when both
-- are zero. The limit travels with each run (queue.slot_limits).
CREATE TABLE {schema}.slots (
    key      text PRIMARY KEY,
    used     int NOT NULL DEFAULT 0,
    reserved int NOT NULL DEFAULT 0
);

-- A run of a concurrency-limited function carries its keys and limits.
-- `blocked_key`: it found that key full and waits, in `available_at`
-- order, for a slot to be handed to it (`reserved_key`); blocked rows leave
-- the claim index, so a flood of one key costs the claim nothing.
-- `throttle`: [key, limit, period in seconds, burst] (and `true` once it
-- was given its turn) until the run is let start (then null: a resumed run
-- is not throttled again).
ALTER TABLE {schema}.queue
    ADD COLUMN slot_keys text[],
    ADD COLUMN slot_limits int[],
    ADD COLUMN holds_slots boolean NOT NULL DEFAULT false,
    ADD COLUMN reserved_key text,
    ADD COLUMN blocked_key text,
    ADD COLUMN throttle jsonb;
DROP INDEX {schema}.queue_available;
CREATE INDEX queue_available ON {schema}.queue (available_at) WHERE blocked_key IS NULL;
CREATE INDEX queue_blocked ON {schema}.queue (blocked_key, available_at)
    WHERE blocked_key IS NOT NULL;

-- throttle=: per (function, key), the generic cell rate algorithm's
-- theoretical arrival times of the turns given out (`tat`) and of the runs
-- started (`started_tat`); see admit_flow.
CREATE TABLE {schema}.throttles (
    function_id text NOT NULL,
    key         text NOT NULL,
    tat         timestamptz NOT NULL,
    started_tat timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);

-- Runs started later than their event keep the flow control of the event
-- that starts them.
ALTER TABLE {schema}.batch_items ADD COLUMN flow jsonb;
ALTER TABLE {schema}.debounces ADD COLUMN flow jsonb;
