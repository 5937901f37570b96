-- The trace context (W3C `traceparent`, `tracestate`) of the span that sent
-- an event, when the sender traced it (OpenTelemetry): the runs it starts
-- link to it. Null otherwise.
ALTER TABLE {schema}.events ADD COLUMN trace jsonb;
