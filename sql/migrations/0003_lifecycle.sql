-- Cancellation by event, failure handlers and cron schedules.

-- cancel_on: a run listens in `waits` for the events that cancel it, as a
-- waiting step listens for its event, with `cancel` set; from `expires_at`
-- on (the Cancel's timeout) it no longer listens.
ALTER TABLE {schema}.waits ADD COLUMN cancel boolean NOT NULL DEFAULT false;
ALTER TABLE {schema}.waits ADD COLUMN expires_at timestamptz;

-- Why a running run was asked to cancel: its result's error once it stops.
ALTER TABLE {schema}.queue ADD COLUMN cancel_reason jsonb;

-- on_failure: the function to run when a run of `function_id` fails for
-- good. Workers write the rows of the functions they serve when they start.
CREATE TABLE {schema}.failure_handlers (
    function_id text PRIMARY KEY,
    handler_id  text NOT NULL,
    retries     int NOT NULL
);

-- cron: the next tick of each scheduled function. A worker that finds it
-- due locks the row, starts the runs and moves `next_tick` on, in one
-- transaction: one run per tick however many workers look.
CREATE TABLE {schema}.schedules (
    function_id text PRIMARY KEY,
    cron        text NOT NULL,
    timezone    text NOT NULL,
    next_tick   timestamptz NOT NULL
);
