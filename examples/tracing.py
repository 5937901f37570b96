"""Tracing: a receipt's run as OpenTelemetry sees it, from the web request
that sent its event to each step it executed, across a retry.

    pip install 'pgdurable[otel]' opentelemetry-sdk
    python examples/tracing.py

With no PGDURABLE_DSN/DATABASE_URL set it runs on the embedded Postgres.
It prints the spans as a tree; in production, give the provider an
exporter to your collector (OTLP) instead of the in-memory one.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pgdurable import Context, Durable
from pgdurable.embedded import dsn_or_embedded


def build(dsn: str, provider: TracerProvider, schema: str = "tracing") -> Durable:
    """The app; its OCR fails once, so the run takes two attempts."""
    app = Durable(dsn, schema=schema, tracer_provider=provider, retry_backoff=("50ms", "1s"))
    failures = [ValueError("OCR service busy")]

    def ocr(key: str) -> str:
        if failures:
            raise failures.pop()
        return f"TOTAL 12.50 EUR ({key})"

    @app.function(id="process-receipt", event="receipt/process")
    def process_receipt(ctx: Context) -> str:
        image = ctx.step.run("download", lambda: f"bytes of {ctx.event.data['key']}")
        return ctx.step.run("ocr", ocr, image)

    return app


def trace_one(app: Durable, provider: TracerProvider, exporter: InMemorySpanExporter) -> list[str]:
    """Send a receipt from a (pretend) web request, run it, and return its
    trace as text lines."""
    app.migrate()
    app.start(threads=2, poll_interval=0.2)
    try:
        with provider.get_tracer("web").start_as_current_span("POST /receipts"):
            [event_id] = app.send("receipt/process", {"key": "r-1.jpg"})
        app.wait_for_run(app.runs_for_event(event_id)[0].id, timeout=60)
    finally:
        app.stop()
    return dump(exporter.get_finished_spans())


def dump(spans: Any) -> list[str]:
    """Spans as an indented tree per trace, in start order; links named."""
    spans = sorted(spans, key=lambda s: s.start_time)
    names = {s.context.span_id: s.name for s in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def show(span: ReadableSpan, depth: int) -> None:
        attributes, status = span.attributes or {}, span.status
        facts = [f"attempt {attributes[key]}" for key in ("pgdurable.attempt",) if key in attributes]
        facts += [f"linked to {names.get(link.context.span_id, '?')!r}" for link in span.links]
        facts += [f"{status.status_code.name}: {status.description}"] if status.description else []
        facts += [event.name for event in span.events if event.name.startswith("pgdurable.")]
        lines.append("  " * depth + span.name + (f"  ({'; '.join(facts)})" if facts else ""))
        for child in children.get(span.context.span_id, []):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)
    return lines


if __name__ == "__main__":
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    print("\n".join(trace_one(build(dsn_or_embedded(), provider), provider, exporter)))
