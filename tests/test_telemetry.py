"""OpenTelemetry traces: from a web request through `send` to the run, its
steps, a retry, a run claimed by another process, and nothing without an
SDK. Metrics: their values after a known workload, the gauges read at
collection, one query serving the queue's gauges."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import psycopg
import pytest
from conftest import memory_tracing

from pgdurable import (
    Batch,
    ConfigurationError,
    Context,
    Debounce,
    Durable,
    Event,
    RunLogFilter,
    UnavailableError,
)

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402

T = TypeVar("T")


@pytest.fixture
def tracing() -> tuple[Any, InMemorySpanExporter]:
    """A tracer provider of the test's own, exporting to memory."""
    return memory_tracing()


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
    other_provider, other_exporter = memory_tracing()
    worker = make_app(tracer_provider=other_provider, trace_runs="child")
    _receipt(worker, fails=[])
    worker.start(threads=1)
    worker.wait_for_run(worker.runs_for_event(event_id)[0].id, 20)
    [send] = _by_name(exporter)["send receipt/process"]
    [attempt] = _by_name(other_exporter)["run receipt"]
    assert attempt.parent.span_id == send.context.span_id  # trace_runs="child"
    assert attempt.context.trace_id == send.context.trace_id


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


def test_timed_batched_debounced_and_failure_handler_runs_link_to_what_started_them(
    make_app: Callable[..., Durable], tracing: tuple[Any, InMemorySpanExporter]
) -> None:
    """A cron tick's run links to the tick's `cron` span; a batch's to each
    send; a debounced run to the send of its (last) event; an on_failure
    handler's run to the send that started the run that failed."""
    provider, exporter = tracing
    app = make_app(tracer_provider=provider)
    app.migrate()
    app.function(id="ticking", cron="* * * * * *")(lambda ctx: None)
    app.function(id="digest", event="mail", batch=Batch(max_size=2, timeout="1h"))(
        lambda ctx: len(ctx.events))
    app.function(id="settled", event="edit", debounce=Debounce("50ms"))(lambda ctx: None)

    @app.function(id="fragile", event="go", retries=0,
                  on_failure=lambda ctx: ctx.event.data["run_id"])
    def fragile(ctx: Context) -> None:
        raise ValueError("broken")

    app.start(threads=2, poll_interval=0.2)
    sends = {}
    for name in ("mail", "mail", "edit", "edit", "go"):
        with provider.get_tracer("web").start_as_current_span(f"POST /{name}"):
            [event_id] = app.send(name, {})
            sends.setdefault(name, []).append(event_id)
    by_id = {s.attributes["pgdurable.event_ids"][0]: s.context.span_id
             for s in _by_name(exporter)["send " + "mail"] + _by_name(exporter)["send edit"]
             + _by_name(exporter)["send go"]}

    def linked(function_id: str) -> list[Any]:
        runs = _by_name(exporter).get(f"run {function_id}", [])
        return [sorted(link.context.span_id for link in run.links) for run in runs]

    for function_id in ("ticking", "digest", "settled", "fragile/on-failure"):
        _poll(partial(linked, function_id))
    ticks = {s.context.span_id for s in _by_name(exporter)["cron ticking"]}
    assert linked("ticking")[0][0] in ticks and len(linked("ticking")[0]) == 1
    assert linked("digest") == [sorted(by_id[e] for e in sends["mail"])]
    assert linked("settled") == [[by_id[sends["edit"][-1]]]]
    assert linked("fragile/on-failure") == [[by_id[sends["go"][0]]]]


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


# -- metrics --------------------------------------------------------------

def _collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """The data points of pgdurable's instruments, by instrument name."""
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name == "pgdurable":
                for metric in scope.metrics:
                    found[metric.name] = list(metric.data.data_points)
    return found


def _by(points: list[Any], *keys: str) -> dict[tuple[Any, ...], Any]:
    return {tuple(p.attributes.get(k) for k in keys): p for p in points}


def _workload(app: Durable) -> None:
    """receipt: two steps, its first run's ocr fails once (one retry);
    broken: fails at once, without retries."""
    _receipt(app, fails=[1])

    @app.function(id="broken", event="receipt/process", retries=0)
    def broken(ctx: Context) -> None:
        raise RuntimeError("always")


def test_a_known_workload_gives_known_metrics(make_app: Callable[..., Durable]) -> None:
    reader = InMemoryMetricReader()
    app = make_app(meter_provider=sdk_metrics.MeterProvider(metric_readers=[reader]))
    app.migrate()
    _workload(app)
    event_ids = app.send([Event("receipt/process", {"n": n}) for n in range(3)])

    queued = _collect(reader)  # before any worker: the queue holds them
    depth = _by(queued["pgdurable.queue.depth"], "pgdurable.function_id", "pgdurable.status")
    assert depth[("receipt", "queued")].value == 3 and depth[("broken", "queued")].value == 3
    [age] = queued["pgdurable.queue.oldest_ready_age"]
    assert age.value > 0
    assert "pgdurable.worker.threads" not in queued  # no worker in this process yet

    app.start(threads=2)
    runs = [r for e in event_ids for r in app.runs_for_event(e)]
    finished = [app.wait_for_run(r.id, 30) for r in runs]
    assert sorted(r.status for r in finished) == ["completed"] * 3 + ["failed"] * 3

    def settled() -> dict[str, list[Any]]:  # the last outcome is counted once written
        points = _collect(reader)
        ended = points.get("pgdurable.runs.finished", [])
        return points if sum(p.value for p in ended) == 6 else {}

    points = _poll(settled)
    started = _by(points["pgdurable.runs.started"], "pgdurable.function_id")
    assert started[("receipt",)].value == 4 and started[("broken",)].value == 3
    ended = _by(points["pgdurable.runs.finished"], "pgdurable.function_id", "pgdurable.status")
    assert ended[("receipt", "completed")].value == 3
    assert ended[("broken", "failed")].value == 3
    [retries] = points["pgdurable.runs.retries"]
    assert retries.value == 1 and retries.attributes["pgdurable.function_id"] == "receipt"
    lags = _by(points["pgdurable.runs.start_lag"], "pgdurable.function_id")
    assert lags[("receipt",)].count == 4 and lags[("broken",)].count == 3
    assert lags[("receipt",)].min >= 0
    # download 3 times, ocr 4 times (once failing); broken has no step
    [steps] = points["pgdurable.steps.duration"]
    assert steps.attributes["pgdurable.function_id"] == "receipt"
    assert steps.count == 7 and steps.sum > 0
    [sizes] = points["pgdurable.journal.batch.size"]
    [commits] = points["pgdurable.journal.commit.duration"]
    assert sizes.count == commits.count > 0 and commits.min > 0
    # at least 6 step entries, 1 retrying entry and 7 transitions were written
    assert sizes.sum >= 14
    threads = _by(points["pgdurable.worker.threads"], "pgdurable.state")
    assert threads[("busy",)].value + threads[("idle",)].value == 2
    assert points.get("pgdurable.queue.depth") is None  # nothing unfinished is left
    assert points["pgdurable.queue.oldest_ready_age"][0].value == 0


def test_one_query_serves_both_queue_gauges(make_app: Callable[..., Durable]) -> None:
    reader = InMemoryMetricReader()
    app = make_app(meter_provider=sdk_metrics.MeterProvider(metric_readers=[reader]))
    app.migrate()
    reads = []
    summary = app.queue_summary

    def counted(**kwargs: Any) -> Any:
        reads.append(1)
        return summary(**kwargs)

    app.queue_summary = counted  # type: ignore[method-assign]
    _workload(app)
    app.send("receipt/process", {})  # the instruments are made at the first send
    assert "pgdurable.queue.depth" in _collect(reader)
    assert len(reads) == 1


def test_a_queue_that_cannot_be_read_gives_no_reading(make_app: Callable[..., Durable]) -> None:
    """Postgres unreachable: the queue's gauges report nothing, and the
    collection of the others goes on."""
    reader = InMemoryMetricReader()
    app = make_app(dsn="postgresql://postgres@127.0.0.1:1/none", connect_timeout=0.5,
                   meter_provider=sdk_metrics.MeterProvider(metric_readers=[reader]))
    _workload(app)
    with pytest.raises(UnavailableError):
        app.send("receipt/process", {})
    points = _collect(reader)
    assert "pgdurable.queue.depth" not in points


def _poll(found: Callable[[], T], timeout: float = 20.0) -> T:
    """`found()`'s value once it is truthy."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, "the metrics did not settle"
        time.sleep(0.05)
    return value
