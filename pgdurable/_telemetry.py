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

import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

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

TraceRuns = Literal["link", "child"]

# The tracer of the run this context executes, for its steps' spans.
_RUN_TRACER: ContextVar[Any] = ContextVar("pgdurable_run_tracer", default=None)
# Control flow, not failures: a run parks, suspends for a retry, or is cancelled.
_NOT_ERRORS = (Park, Suspend, Cancelled)


class Tracing:
    """The spans of one app (see the module's docstring)."""

    def __init__(self, provider: Any = None, runs: TraceRuns = "link") -> None:
        self._provider = provider
        self._runs = runs

    def _tracer(self) -> Any:
        """The tracer to use, or None when no SDK is configured."""
        if trace is None:
            return None
        provider = self._provider or trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
            return None
        return _tracer_of(provider)

    @contextmanager
    def sending(self, names: Sequence[str]) -> Iterator[str | None]:
        """A `send` span, current while the block sends; yields the context
        to store with the events (JSON), or None when not tracing."""
        tracer = self._tracer()
        if tracer is None:
            yield None
            return
        distinct = sorted(set(names))
        with tracer.start_as_current_span(
                f"send {distinct[0] if len(distinct) == 1 else 'events'}", kind=SpanKind.PRODUCER,
                attributes={"pgdurable.event_names": distinct,
                            "messaging.batch.message_count": len(names)}):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            yield json.dumps(carrier)

    @staticmethod
    def sent(event_ids: Sequence[str]) -> None:
        """Name the events the current `send` span sent."""
        if trace is not None:
            trace.get_current_span().set_attribute("pgdurable.event_ids", list(event_ids))

    @contextmanager
    def running(
        self, run_id: str, function_id: str, attempt: int, event_ids: Sequence[str],
        traces: Sequence[dict[str, str]],
    ) -> Iterator[None]:
        """A `run` span, current while the handler runs: linked to the spans
        that sent the run's events (`traces`), or the child of the first."""
        tracer = self._tracer()
        if tracer is None:
            yield
            return
        senders = [trace.get_current_span(propagate.extract(t)).get_span_context() for t in traces]
        senders = [s for s in senders if s.is_valid]
        parent = None
        if self._runs == "child" and senders:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(senders[0]))
        attributes = {"pgdurable.run_id": run_id, "pgdurable.function_id": function_id,
                      "pgdurable.attempt": attempt, "pgdurable.event_ids": list(event_ids)}
        with tracer.start_as_current_span(
                f"run {function_id}", context=parent, kind=SpanKind.CONSUMER,
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


@contextmanager
def step_span(key: str) -> Iterator[None]:
    """A `step <key>` span under the current run's, while the step's own
    code runs (nothing when the run is not traced)."""
    tracer = _RUN_TRACER.get()
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(
            f"step {key}", attributes={"pgdurable.step": key}, record_exception=False,
            set_status_on_exception=False) as span:
        try:
            yield
        except BaseException as exc:
            _ended(span, exc)
            raise


def _ended(span: Any, exc: BaseException) -> None:
    """Mark the span with how its block ended: a failure is an error; a
    park, a suspension for a retry or a cancel only an event."""
    if isinstance(exc, _NOT_ERRORS):
        span.add_event(f"pgdurable.{type(exc).__name__.lower()}")
        return
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


@functools.lru_cache(maxsize=8)
def _tracer_of(provider: Any) -> Any:
    return provider.get_tracer("pgdurable", __version__)
