"""OpenTelemetry traces: from a web request through `send` to the run, its
steps, a retry, a run claimed by another process, and nothing without an SDK."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgdurable import ConfigurationError, Context, Durable, RunLogFilter

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402


@pytest.fixture
def tracing() -> tuple[Any, InMemorySpanExporter]:
    """A tracer provider of the test's own, exporting to memory."""
    return _memory_tracing()


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
    other_provider, other_exporter = _memory_tracing()
    worker = make_app(tracer_provider=other_provider, trace_runs="child")
    _receipt(worker, fails=[])
    worker.start(threads=1)
    worker.wait_for_run(worker.runs_for_event(event_id)[0].id, 20)
    [send] = _by_name(exporter)["send receipt/process"]
    [attempt] = _by_name(other_exporter)["run receipt"]
    assert attempt.parent.span_id == send.context.span_id  # trace_runs="child"
    assert attempt.context.trace_id == send.context.trace_id


def _memory_tracing() -> tuple[Any, InMemorySpanExporter]:
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


def test_sleeps_waits_and_invokes_say_what_they_wait_for(
    make_app: Callable[..., Durable], tracing: tuple[Any, InMemorySpanExporter]
) -> None:
    """Each parking step is an event on its attempt's span, with what it
    waits for; the child run of an invoke links to the attempt that started it."""
    provider, exporter = tracing
    app = make_app(tracer_provider=provider)
    app.migrate()

    @app.function(id="child", event="child/unused")
    def child(ctx: Context) -> int:
        return 7

    @app.function(id="parent", event="parent/start")
    def parent(ctx: Context) -> int:
        ctx.step.sleep("nap", "10ms")
        reply = ctx.step.wait_for_event("reply", event="reply", timeout="50ms")
        return int(ctx.step.invoke("ask-child", function=child)) + (reply is None)

    app.start(threads=2, poll_interval=0.2)
    [event_id] = app.send("parent/start", {})
    assert app.wait_for_run(app.runs_for_event(event_id)[0].id, 20).output == 8
    spans = _by_name(exporter)
    events = {e.name: (attempt, dict(e.attributes or {}))
              for attempt in spans["run parent"] for e in attempt.events}
    assert events["pgdurable.sleep"][1]["pgdurable.step"] == "nap"
    wait = events["pgdurable.wait"][1]
    assert (wait["pgdurable.step"], wait["pgdurable.events"], wait["pgdurable.outcome"]) == (
        "reply", ("reply",), "parked")
    invoking, invoke = events["pgdurable.invoke"]
    assert invoke["pgdurable.function_id"] == "child"
    [child_attempt] = spans["run child"]
    assert [link.context.span_id for link in child_attempt.links] == [invoking.context.span_id]


def test_log_records_say_which_run_and_span_they_are_about(
    make_app: Callable[..., Durable], tracing: tuple[Any, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ctx.logger's records, and the app's own through RunLogFilter, carry
    the run, function, step and, traced, the step span's ids; the worker's
    records about a run carry its ids."""
    provider, exporter = tracing
    app = make_app(tracer_provider=provider)
    app.migrate()
    own = logging.getLogger("myapp.ocr")
    own.addFilter(RunLogFilter())
    failures = [ValueError("busy")]

    @app.function(id="logged", event="logged", retries=1)
    def logged(ctx: Context) -> None:
        def ocr() -> None:
            ctx.logger.info("reading")
            own.info("calling the OCR service")

        ctx.step.run("ocr", ocr)
        if failures:  # the handler fails once, outside any step: the worker says so
            raise failures.pop()

    caplog.set_level(logging.INFO)
    app.start(threads=1)
    [event_id] = app.send("logged", {})
    run_id = app.runs_for_event(event_id)[0].id
    assert app.wait_for_run(run_id, 20).status == "completed"
    [done] = _by_name(exporter)["step ocr"]
    for message in ("reading", "calling the OCR service"):
        record = [r for r in caplog.records if r.getMessage() == message][-1]
        assert (record.run_id, record.function_id, record.step) == (run_id, "logged", "ocr")
        assert record.trace_id == f"{done.context.trace_id:032x}"
        assert record.span_id == f"{done.context.span_id:016x}"
    [retried] = [r for r in caplog.records if "handler raised" in r.getMessage()]
    assert (retried.run_id, retried.function_id) == (run_id, "logged")  # type: ignore[attr-defined]
    outside = logging.LogRecord("myapp", logging.INFO, __file__, 1, "outside", None, None)
    assert RunLogFilter().filter(outside) and outside.run_id is None  # type: ignore[attr-defined]
