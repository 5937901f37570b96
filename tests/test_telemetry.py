"""OpenTelemetry traces: from a web request through `send` to the run, its
steps, a retry, a run claimed by another process, and nothing without an SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgdurable import ConfigurationError, Context, Durable

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402


@pytest.fixture
def tracing() -> tuple[Any, InMemorySpanExporter]:
    """A tracer provider of the test's own, exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _by_name(exporter: InMemorySpanExporter) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def _receipt(app: Durable, fails: list[int]) -> None:
    @app.function(id="receipt", event="receipt/process", retries=2)
    def receipt(ctx: Context) -> int:
        data = ctx.step.run("download", lambda: "bytes")

        def ocr() -> int:
            if fails:
                fails.pop()
                raise ValueError("no total in the text")
            return len(data)

        return ctx.step.run("ocr", ocr)


def test_a_request_sends_and_the_run_and_its_steps_are_traced(
    make_app: Callable[..., Durable], tracing: tuple[Any, InMemorySpanExporter]
) -> None:
    """send is a child of the request; the run a new trace linked to it, once
    per attempt; each executed step a child of its attempt, a failed one an
    error; a step returned from the journal emits nothing."""
    provider, exporter = tracing
    app = make_app(tracer_provider=provider)
    app.migrate()
    _receipt(app, fails=[1])
    app.start(threads=1)
    with provider.get_tracer("web").start_as_current_span("POST /receipts") as request:
        [event_id] = app.send("receipt/process", {"key": "a.png"})
    run = app.wait_for_run(app.runs_for_event(event_id)[0].id, 20)
    assert run.status == "completed"
    spans = _by_name(exporter)
    [send] = spans["send receipt/process"]
    assert send.parent.span_id == request.get_span_context().span_id
    assert send.attributes["pgdurable.event_ids"] == (event_id,)
    attempts = sorted(spans["run receipt"], key=lambda s: s.attributes["pgdurable.attempt"])
    assert [a.attributes["pgdurable.attempt"] for a in attempts] == [0, 1]
    for attempt in attempts:
        assert attempt.parent is None and attempt.context.trace_id != send.context.trace_id
        assert [link.context.span_id for link in attempt.links] == [send.context.span_id]
        assert attempt.attributes["pgdurable.run_id"] == run.id
        assert attempt.attributes["pgdurable.event_ids"] == (event_id,)
    [download] = spans["step download"]  # the retry took it from the journal
    assert download.parent.span_id == attempts[0].context.span_id
    failed, done = sorted(spans["step ocr"], key=lambda s: s.start_time)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.events[0].name == "exception"
    assert failed.parent.span_id == attempts[0].context.span_id
    assert done.parent.span_id == attempts[1].context.span_id
    assert done.status.status_code == StatusCode.UNSET
    assert [e.name for e in attempts[0].events] == ["pgdurable.suspend"]


def test_a_run_claimed_in_another_process_links_to_the_send(
    make_app: Callable[..., Durable], tracing: tuple[Any, InMemorySpanExporter],
    db: psycopg.Connection[Any],
) -> None:
    """The send's context is stored with the event, so whichever worker
    claims the run (here another app, with its own provider; after a crash,
    another host) links its attempt to the send."""
    provider, exporter = tracing
    sender = make_app(tracer_provider=provider)
    sender.migrate()
    _receipt(sender, fails=[])
    [event_id] = sender.send("receipt/process", {"key": "b.png"})
    stored = db.execute(f'SELECT trace FROM "{sender.schema}".events WHERE id = %s',
                        (event_id,)).fetchone()
    assert stored is not None and stored[0]["traceparent"].startswith("00-")
    other_provider, other_exporter = _other_tracing()
    worker = make_app(tracer_provider=other_provider, trace_runs="child")
    _receipt(worker, fails=[])
    worker.start(threads=1)
    worker.wait_for_run(worker.runs_for_event(event_id)[0].id, 20)
    [send] = _by_name(exporter)["send receipt/process"]
    [attempt] = _by_name(other_exporter)["run receipt"]
    assert attempt.parent.span_id == send.context.span_id  # trace_runs="child"
    assert attempt.context.trace_id == send.context.trace_id


def _other_tracing() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_without_an_sdk_nothing_is_traced_or_stored(
    app: Durable, db: psycopg.Connection[Any], tracing: tuple[Any, InMemorySpanExporter]
) -> None:
    """No provider given and none configured globally: no span, no context stored."""
    _, exporter = tracing
    _receipt(app, fails=[])
    app.start(threads=1)
    [event_id] = app.send("receipt/process", {"key": "c.png"})
    assert app.wait_for_run(app.runs_for_event(event_id)[0].id, 20).status == "completed"
    stored = db.execute(f'SELECT trace FROM "{app.schema}".events WHERE id = %s',
                        (event_id,)).fetchone()
    assert stored == (None,)
    assert exporter.get_finished_spans() == ()


def test_trace_runs_must_be_link_or_child(make_app: Callable[..., Durable]) -> None:
    with pytest.raises(ConfigurationError, match="trace_runs"):
        make_app(trace_runs="parent")
