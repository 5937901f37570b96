"""The OpenTelemetry SDK's own cost for what one traced run of one step
emits: the floor under what tracing costs pgdurable (W1 --trace).

    python bench/span_cost.py [--runs 20000]

Single thread, no database: a `run` span linked to a stored send context,
with pgdurable's attributes, and a `step` span under it, through the same
code pgdurable runs (`Telemetry.running`, `observing_step`), exported
(batched) to nowhere. Beside it, the same spans made with the SDK alone.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from common import telemetry
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

from pgdurable._counts import QueueSummary
from pgdurable._events import Event
from pgdurable._records import ClaimedRow, DbTime
from pgdurable._telemetry import Telemetry, observing_step


def per_call(runs: int, body: Callable[[], object]) -> float:
    """Microseconds per call of `body`, best of three passes."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(runs):
            body()
        best = min(best, time.perf_counter() - began)
    return best / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20_000)
    args = parser.parse_args()
    provider = telemetry(argparse.Namespace(trace=True, metrics=False))["tracer_provider"]
    tracer = provider.get_tracer("bench")
    observed = Telemetry(tracer_provider=provider, queue=_no_queue, threads=lambda: None)
    with observed.sending(["bench/w1"]) as stored:
        assert stored is not None
    claimed = _claimed(stored)

    def through_pgdurable() -> None:
        with observed.running(claimed), observing_step("work"):
            pass

    sender = trace.get_current_span(propagate.extract(claimed.traces[0])).get_span_context()

    def sdk_alone() -> None:
        with tracer.start_as_current_span(
                "run one-step", kind=SpanKind.CONSUMER, links=[Link(sender)],
                attributes={"pgdurable.run_id": claimed.id, "pgdurable.function_id": "one-step",
                            "pgdurable.attempt": 0, "pgdurable.event_ids": ["e"]}), \
                tracer.start_as_current_span("step work", attributes={"pgdurable.step": "work"}):
            pass

    print(f"span cost per traced run of one step: {per_call(args.runs, through_pgdurable):.1f} µs "
          f"through pgdurable, {per_call(args.runs, sdk_alone):.1f} µs with the SDK alone "
          f"(one thread, {args.runs} runs, best of 3)")


def _no_queue() -> QueueSummary:
    raise NotImplementedError("no metrics here")


def _claimed(stored: str) -> ClaimedRow:
    """A claimed run of one event, whose send stored `stored`."""
    now = datetime.now(UTC)
    return ClaimedRow(
        id="01000000-0000-7000-8000-000000000001", token=1, function_id="one-step", attempt=0,
        handler_attempts=0, retries=0, cancel_requested=False,
        events=[Event("bench/w1", {}, "e")], traces=(json.loads(stored),), journal={},
        first_start=True, due_at=now, started_at=now, clock=DbTime(now, 0.0, 0.0))


if __name__ == "__main__":
    main()
