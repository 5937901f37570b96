-- rate_limit=: the start times of the runs admitted in the last period per
-- (function, key), at most `limit` of them (a sliding log), replacing the
-- GCRA arrival time, which let up to 2 x limit - 1 runs through in one
-- period. Rows of the old form start with an empty log.
ALTER TABLE {schema}.rate_limits DROP COLUMN tat;
ALTER TABLE {schema}.rate_limits ADD COLUMN admitted timestamptz[] NOT NULL DEFAULT '{}';
