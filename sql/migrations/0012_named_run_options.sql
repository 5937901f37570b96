-- Run options are read by name (issue 14): stored ones, of runs queued or
-- waiting in a debounce or a batch when this runs, get the named shapes
-- that the functions now read.
CREATE OR REPLACE FUNCTION pg_temp.named_throttle(t jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT CASE WHEN jsonb_typeof(t) = 'array' THEN
        jsonb_build_object('key', t -> 0, 'limit', t -> 1, 'period', t -> 2, 'burst', t -> 3)
        || CASE WHEN jsonb_array_length(t) > 4 THEN '{"turned": true}'::jsonb ELSE '{}' END
    ELSE t END;
$$;

CREATE OR REPLACE FUNCTION pg_temp.named_options(o jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT o || (SELECT coalesce(jsonb_object_agg(k, v), '{}') FROM jsonb_each(jsonb_build_object(
        'slots', (SELECT jsonb_agg(jsonb_build_object('key', s -> 0, 'limit', s -> 1))
                  FROM jsonb_array_elements(o -> 'slots') s WHERE jsonb_typeof(s) = 'array'),
        'throttle', CASE WHEN o ? 'throttle' THEN pg_temp.named_throttle(o -> 'throttle') END,
        'cancels', (SELECT jsonb_agg(jsonb_build_object(
                        'event', c -> 0, 'path', c -> 1, 'value', c -> 2, 'condition', c -> 3,
                        'vars', c -> 4, 'expires', c -> 5))
                    FROM jsonb_array_elements(o -> 'cancels') c WHERE jsonb_typeof(c) = 'array'),
        'rate_limit', CASE WHEN jsonb_typeof(o -> 'rate_limit') = 'array' THEN jsonb_build_object(
            'key', o -> 'rate_limit' -> 0, 'limit', o -> 'rate_limit' -> 1,
            'period', o -> 'rate_limit' -> 2) END,
        'singleton', CASE WHEN jsonb_typeof(o -> 'singleton') = 'array' THEN jsonb_build_object(
            'key', o -> 'singleton' -> 0, 'mode', o -> 'singleton' -> 1) END,
        'debounce', CASE WHEN jsonb_typeof(o -> 'debounce') = 'array' THEN jsonb_build_object(
            'key', o -> 'debounce' -> 0, 'period', o -> 'debounce' -> 1,
            'timeout', o -> 'debounce' -> 2) END,
        'batch', CASE WHEN jsonb_typeof(o -> 'batch') = 'array' THEN jsonb_build_object(
            'key', o -> 'batch' -> 0, 'max_size', o -> 'batch' -> 1,
            'timeout', o -> 'batch' -> 2) END)) AS x(k, v) WHERE v <> 'null');
$$;

UPDATE {schema}.queue SET throttle = pg_temp.named_throttle(throttle)
WHERE jsonb_typeof(throttle) = 'array';
UPDATE {schema}.debounces SET flow = pg_temp.named_options(flow) WHERE flow IS NOT NULL;
UPDATE {schema}.batch_items SET flow = pg_temp.named_options(flow) WHERE flow IS NOT NULL;
