-- The event a wait_for_event step consumed, so that a later wait of the
-- same run, looking back over the same window, does not take it again.
ALTER TABLE {schema}.steps ADD COLUMN event_id text;
