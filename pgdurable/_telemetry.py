"""OpenTelemetry traces (the `otel` extra).

When the app has configured an SDK (a tracer provider, global or given to
`Durable(tracer_provider=...)`): `send` emits a `send <event name>` span
and stores its context with the events; each attempt of a run emits
`run <function id>`, linked to the spans that sent its events (their child
instead with `trace_runs="child"`); each step that executes (not one
returned from the journal) emits `step <step key>` under it. Without the
extra, or without an SDK, nothing is emitted, for one check per send and
per run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from ._control import Cancelled, Park, Suspend
from ._version import __version__

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import (
        Link,
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )
except ImportError:  # the extra is not installed: nothing to emit
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ._store import ClaimedRow

TraceRuns = Literal["link", "child"]
# What the spans' context managers are when nothing is traced: no generator,
# no span, for the price of a check (W1 stays within noise of untraced).
_UNTRACED: AbstractContextManager[Any] = nullcontext()

# The tracer of the run this context executes, for its steps' spans.
_RUN_TRACER: ContextVar[Any] = ContextVar("pgdurable_run_tracer", default=None)
# Control flow, not failures: a run parks, suspends for a retry, or is cancelled.
_NOT_ERRORS = (Park, Suspend, Cancelled)


class Tracing:
    """The spans of one app (see the module's docstring)."""

    def __init__(self, provider: Any = None, runs: TraceRuns = "link") -> None:
        self._provider = provider
        self._runs = runs
        self._found: Any = None  # the tracer, once there is one
        self._look_again = 0.0  # monotonic time to look for a global provider again

    def _tracer(self) -> Any:
        """The tracer to use, or None when no SDK is configured. A global
        provider can be set only once: once found it is kept; until then it
        is looked for once a second, so a run or a send costs one clock read."""
        if self._found is not None or trace is None:
            return self._found
        now = time.monotonic()
        if now < self._look_again:
            return None
        provider = self._provider or trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
            self._look_again = now + 1.0
            return None
        self._found = provider.get_tracer("pgdurable", __version__)
        return self._found

    def sending(self, names: Sequence[str]) -> AbstractContextManager[str | None]:
        """A `send` span, current while the block sends; its `as` is the
        context to store with the events (JSON), or None when not tracing."""
        tracer = self._tracer()
        return _UNTRACED if tracer is None else self._sending(tracer, names)

    @staticmethod
    @contextmanager
    def _sending(tracer: Any, names: Sequence[str]) -> Iterator[str | None]:
        distinct = sorted(set(names))
        with tracer.start_as_current_span(
                f"send {distinct[0] if len(distinct) == 1 else 'events'}", kind=SpanKind.PRODUCER,
                attributes={"pgdurable.event_names": distinct,
                            "messaging.batch.message_count": len(names)}):
            yield _current_context_json()

    @staticmethod
    def sent(event_ids: Sequence[str]) -> None:
        """Name the events the current `send` span sent."""
        if trace is not None:
            trace.get_current_span().set_attribute("pgdurable.event_ids", list(event_ids))

    def running(self, claimed: ClaimedRow) -> AbstractContextManager[Any]:
        """A `run` span, current while the handler runs: linked to the spans
        that sent the run's events, or the child of the first."""
        tracer = self._tracer()
        return _UNTRACED if tracer is None else self._running(tracer, claimed)

    def _running(self, tracer: Any, claimed: ClaimedRow) -> _Current:
        senders = [s for t in claimed.traces if (s := _sender(tuple(t.items()))) is not None]
        parent = None
        if self._runs == "child" and senders:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(senders[0]))
        attributes = {"pgdurable.run_id": claimed.id, "pgdurable.function_id": claimed.function_id,
                      "pgdurable.attempt": claimed.attempt,
                      "pgdurable.event_ids": [e.id for e in claimed.events if e.id]}
        return _Current(tracer.start_span(
            f"run {claimed.function_id}", context=parent, kind=SpanKind.CONSUMER,
            links=[Link(s) for s in senders] if parent is None else None,
            attributes=attributes, record_exception=False, set_status_on_exception=False),
            run_tracer=tracer)


class _Current:
    """A started span, current while a block runs (and, for a run's span,
    its tracer the steps'), then ended with how the block ended. A class,
    not a generator: a span's own overhead is most of what tracing costs."""

    __slots__ = ("_run_tracer", "_span", "_tokens")

    def __init__(self, span: Any, run_tracer: Any = None) -> None:
        self._span = span
        self._run_tracer = run_tracer
        self._tokens: tuple[Any, Any] = (None, None)

    def __enter__(self) -> Any:
        run = None if self._run_tracer is None else _RUN_TRACER.set(self._run_tracer)
        self._tokens = (otel_context.attach(trace.set_span_in_context(self._span)), run)
        return self._span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        attached, run = self._tokens
        if exc is not None:
            _ended(self._span, exc)
        otel_context.detach(attached)
        if run is not None:
            _RUN_TRACER.reset(run)
        self._span.end()


def step_span(key: str) -> AbstractContextManager[Any]:
    """A `step <key>` span under the current run's, while the step's own
    code runs (nothing when the run is not traced)."""
    tracer = _RUN_TRACER.get()
    if tracer is None:
        return _UNTRACED
    return _Current(tracer.start_span(f"step {key}", attributes={"pgdurable.step": key},
                                      record_exception=False, set_status_on_exception=False))


def annotate(name: str, attributes: dict[str, str | list[str]]) -> None:
    """An event on the current run's span (a sleep, a wait, an invoke, with
    what it waits for); nothing when the run is not traced."""
    if _RUN_TRACER.get() is not None:
        trace.get_current_span().add_event(name, attributes)


def trace_ids() -> dict[str, str]:
    """The ids of the current span of a traced run, as log records carry
    them (hex, as OpenTelemetry prints them); none when it is not traced."""
    if _RUN_TRACER.get() is None:
        return {}
    context = trace.get_current_span().get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def context_json() -> str | None:
    """The current span's context as JSON (what a sent event stores), when
    the current run is traced."""
    return None if _RUN_TRACER.get() is None else _current_context_json()


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

