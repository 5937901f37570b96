"""OpenTelemetry traces and metrics (the `otel` extra).

When the app has configured an SDK (a tracer provider, global or given to
`Durable(tracer_provider=...)`): `send` emits a `send <event name>` span
and stores its context with the events; each attempt of a run emits
`run <function id>`, linked to the spans that sent its events (their child
instead with `trace_runs="child"`); each step that executes (not one
returned from the journal) emits `step <step key>` under it. With a meter
provider, the instruments of _metrics.py record the same moments. Without
the extra, or without an SDK, nothing is emitted, for one check per send,
per run and per step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from ._control import Cancelled, Park, Suspend
from ._metrics import (
    BATCH_SIZE,
    COMMIT_DURATION,
    RETRIES,
    RUNS_FINISHED,
    RUNS_STARTED,
    START_LAG,
    STEP_DURATION,
    Attributes,
    Instruments,
    QueueReader,
    ThreadsReader,
)
from ._version import __version__

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # the extra is not installed: nothing to emit
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ._records import ClaimedRow, Finish

TraceRuns = Literal["link", "child"]
T = TypeVar("T")
# What the context managers below are when nothing is observed: no
# generator, no span, for the price of a check (W1 stays within noise).
_UNTRACED: AbstractContextManager[Any] = nullcontext()
_ENDINGS = ("completed", "failed", "cancelled")  # the statuses runs.finished counts
# Control flow, not failures: a run parks, suspends for a retry, or is cancelled.
_NOT_ERRORS = (Park, Suspend, Cancelled)


@dataclass(frozen=True, slots=True)
class _Run:
    """What observes the run this context executes: its tracer, its
    instruments (either may be None) and the attributes of its metrics."""

    tracer: Any
    instruments: Instruments | None
    attributes: Attributes


# The run this context executes, for its steps.
_RUN: ContextVar[_Run | None] = ContextVar("pgdurable_run", default=None)


class _Provided(Generic[T]):
    """What a provider gives (a tracer, the instruments on a meter), once
    the app has configured one: given, or set globally. A global provider
    can be set only once: once found it is kept; until then it is looked
    for once a second, so a run or a send costs one clock read."""

    def __init__(self, given: Any, global_provider: Callable[[], Any],
                 make: Callable[[Any], T]) -> None:
        self._given = given
        self._global = global_provider
        self._make = make
        self._found: T | None = None
        self._look_again = 0.0  # monotonic time to look for a global provider again

    def get(self) -> T | None:
        if self._found is not None or trace is None:
            return self._found
        now = time.monotonic()
        if now < self._look_again:
            return None
        provider = self._given or self._global()
        # The API's own placeholders (a proxy until one is set, or no-op):
        # no SDK is configured yet.
        if type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics")):
            self._look_again = now + 1.0
            return None
        self._found = self._make(provider)
        return self._found


class Telemetry:
    """The spans and metrics of one app (see the module's docstring)."""

    def __init__(self, *, tracer_provider: Any = None, runs: TraceRuns = "link",
                 meter_provider: Any = None, queue: QueueReader, threads: ThreadsReader) -> None:
        """`queue` and `threads` read what the gauges observe."""
        self._runs = runs
        self._tracer: _Provided[Any] = _Provided(
            tracer_provider, lambda: trace.get_tracer_provider(),
            lambda provider: provider.get_tracer("pgdurable", __version__))
        self._instruments: _Provided[Instruments] = _Provided(
            meter_provider, lambda: metrics.get_meter_provider(),
            lambda provider: Instruments(provider.get_meter("pgdurable", __version__),
                                         queue, threads))

    def look(self) -> None:
        """Make the instruments now if a meter provider is configured, so the
        gauges are observed even while no run starts (the worker calls this
        at each heartbeat)."""
        self._instruments.get()

    def sending(
        self, names: Sequence[str], span: str | None = None
    ) -> AbstractContextManager[str | None]:
        """A `send` span (or one named `span`), current while the block
        sends; its `as` is the context to store with the events (JSON), or
        None when not tracing."""
        self.look()  # an app that only sends observes the queue too
        tracer = self._tracer.get()
        return _UNTRACED if tracer is None else self._sending(tracer, names, span)

    @staticmethod
    @contextmanager
    def _sending(tracer: Any, names: Sequence[str], span: str | None) -> Iterator[str | None]:
        distinct = sorted(set(names))
        with tracer.start_as_current_span(
                span or f"send {distinct[0] if len(distinct) == 1 else 'events'}",
                kind=SpanKind.PRODUCER,
                attributes={"pgdurable.event_names": distinct,
                            "messaging.batch.message_count": len(names)}):
            yield _current_context_json()

    @staticmethod
    def sent(event_ids: Sequence[str]) -> None:
        """Name the events the current `send` span sent."""
        if trace is not None:
            trace.get_current_span().set_attribute("pgdurable.event_ids", list(event_ids))

    def running(self, claimed: ClaimedRow) -> AbstractContextManager[Any]:
        """Observe an attempt of a run, as its handler begins: count it and
        its lag behind its due time (on the database's clock), and make a
        `run` span current while the handler runs, linked to the spans that
        sent the run's events (or the child of the first)."""
        tracer, instruments = self._tracer.get(), self._instruments.get()
        if tracer is None and instruments is None:
            return _UNTRACED
        attributes = (("pgdurable.function_id", claimed.function_id),)
        if instruments is not None:
            lag = (claimed.clock.now() - claimed.due_at).total_seconds()
            instruments.record(RUNS_STARTED, 1, attributes)
            instruments.record(START_LAG, max(0.0, lag), attributes)
        run = _Run(tracer, instruments, attributes)
        return _Current(None if tracer is None else self._run_span(tracer, claimed), run)

    def _run_span(self, tracer: Any, claimed: ClaimedRow) -> Any:
        senders = [s for t in claimed.traces if (s := _sender(tuple(t.items()))) is not None]
        parent = None
        if self._runs == "child" and senders:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(senders[0]))
        attributes = {"pgdurable.run_id": claimed.id, "pgdurable.function_id": claimed.function_id,
                      "pgdurable.attempt": claimed.attempt,
                      "pgdurable.event_ids": [e.id for e in claimed.events if e.id]}
        return tracer.start_span(
            f"run {claimed.function_id}", context=parent, kind=SpanKind.CONSUMER,
            links=[Link(s) for s in senders] if parent is None else None,
            attributes=attributes, record_exception=False, set_status_on_exception=False)

    def ended(self, function_id: str, outcome: Finish) -> None:
        """Count an attempt's outcome: a run's end, or a retry."""
        instruments = self._instruments.get()
        if instruments is None:
            return
        attributes: Attributes = (("pgdurable.function_id", function_id),)
        if outcome.retry:
            instruments.record(RETRIES, 1, attributes)
        elif outcome.status in _ENDINGS:
            instruments.record(RUNS_FINISHED, 1,
                               (*attributes, ("pgdurable.status", outcome.status)))

    def journal_written(self, entries: int, seconds: float) -> None:
        """Record a journal batch of `entries` committed in `seconds`."""
        instruments = self._instruments.get()
        if instruments is not None:
            instruments.record(BATCH_SIZE, entries)
            instruments.record(COMMIT_DURATION, seconds)


class _Current:
    """While a block runs: a started span current (if any), and the run it
    observes for its steps (if it is a run's); then the span ended with how
    the block ended, and a step's duration recorded. A class, not a
    generator: a span's own overhead is most of what tracing costs."""

    __slots__ = ("_began", "_run", "_span", "_step", "_tokens")

    def __init__(self, span: Any, run: _Run, step: bool = False) -> None:
        self._span = span
        self._run = run
        self._step = step
        self._began = 0.0
        self._tokens: tuple[Any, Any] = (None, None)

    def __enter__(self) -> Any:
        run = None if self._step else _RUN.set(self._run)
        span = None if self._span is None else otel_context.attach(
            trace.set_span_in_context(self._span))
        self._tokens = (span, run)
        self._began = time.perf_counter()
        return self._span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        span, run = self._tokens
        if self._step and self._run.instruments is not None:
            self._run.instruments.record(STEP_DURATION, time.perf_counter() - self._began,
                                         self._run.attributes)
        if self._span is not None:
            if exc is not None:
                _ended(self._span, exc)
            otel_context.detach(span)
            self._span.end()
        if run is not None:
            _RUN.reset(run)


def observing_step(key: str) -> AbstractContextManager[Any]:
    """While a step's own code runs: a `step <key>` span under the current
    run's, and its duration for the metrics (nothing when the run is not
    observed)."""
    run = _RUN.get()
    if run is None:
        return _UNTRACED
    span = None if run.tracer is None else run.tracer.start_span(
        f"step {key}", attributes={"pgdurable.step": key},
        record_exception=False, set_status_on_exception=False)
    return _Current(span, run, step=True)


def annotate(name: str, attributes: dict[str, str | list[str]]) -> None:
    """An event on the current run's span (a sleep, a wait, an invoke, with
    what it waits for); nothing when the run is not traced."""
    if _traced():
        trace.get_current_span().add_event(name, attributes)


def trace_ids() -> dict[str, str]:
    """The ids of the current span of a traced run, as log records carry
    them (hex, as OpenTelemetry prints them); none when it is not traced."""
    if not _traced():
        return {}
    context = trace.get_current_span().get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def context_json() -> str | None:
    """The current span's context as JSON (what a sent event stores), when
    the current run is traced."""
    return _current_context_json() if _traced() else None


def _traced() -> bool:
    """Whether the run this context executes is traced."""
    run = _RUN.get()
    return run is not None and run.tracer is not None


@lru_cache(maxsize=1024)
def _sender(carrier: tuple[tuple[str, str], ...]) -> Any:
    """The context of the span that sent an event, from what the event
    stores (the propagator's fields); cached, as the runs of one send (a
    batch, or one run's attempts) share it and extracting costs a third of
    what a span does."""
    context = trace.get_current_span(propagate.extract(dict(carrier))).get_span_context()
    return context if context.is_valid else None


def _current_context_json() -> str:
    """The current span's context (W3C traceparent, tracestate) as JSON."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier)


def _ended(span: Any, exc: BaseException) -> None:
    """Mark the span with how its block ended: a failure is an error; a
    park, a suspension for a retry or a cancel only an event."""
    if isinstance(exc, _NOT_ERRORS):
        span.add_event(f"pgdurable.{type(exc).__name__.lower()}")
        return
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

