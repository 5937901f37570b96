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
from typing import TYPE_CHECKING, Any, Literal

from ._control import Cancelled, Park, Suspend
from ._version import __version__

try:
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

    @contextmanager
    def _running(self, tracer: Any, claimed: ClaimedRow) -> Iterator[None]:
        traces = claimed.traces
        senders = [trace.get_current_span(propagate.extract(t)).get_span_context() for t in traces]
        senders = [s for s in senders if s.is_valid]
        parent = None
        if self._runs == "child" and senders:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(senders[0]))
        attributes = {"pgdurable.run_id": claimed.id, "pgdurable.function_id": claimed.function_id,
                      "pgdurable.attempt": claimed.attempt,
                      "pgdurable.event_ids": [e.id for e in claimed.events if e.id]}
        with tracer.start_as_current_span(
                f"run {claimed.function_id}", context=parent, kind=SpanKind.CONSUMER,
                links=[Link(s) for s in senders] if parent is None else None,
                attributes=attributes, record_exception=False,
                set_status_on_exception=False) as span:
            token = _RUN_TRACER.set(tracer)
            try:
                yield
            except BaseException as exc:
                _ended(span, exc)
                raise
            finally:
                _RUN_TRACER.reset(token)


def step_span(key: str) -> AbstractContextManager[Any]:
    """A `step <key>` span under the current run's, while the step's own
    code runs (nothing when the run is not traced)."""
    tracer = _RUN_TRACER.get()
    return _UNTRACED if tracer is None else _step_span(tracer, key)


@contextmanager
def _step_span(tracer: Any, key: str) -> Iterator[None]:
    with tracer.start_as_current_span(
            f"step {key}", attributes={"pgdurable.step": key}, record_exception=False,
            set_status_on_exception=False) as span:
        try:
            yield
        except BaseException as exc:
            _ended(span, exc)
            raise


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

