"""OpenTelemetry metrics (the `otel` extra): the instruments under `pgdurable.`.

Recorded where things happen: a run's start (and its lag behind its due
time) and its end by the executor, a step's duration by the step, a batch
of the journal by its writer. Observed at each collection, from one query
and a look at the worker: the queue's depth and oldest ready age, and the
executor threads busy and idle.

The SDK's instruments take a lock per measurement: 8 executors recording
into them directly made W1 three times slower. So the hot path only
appends to a queue; one thread at a time hands the queue to the SDK, at
each collection (before the SDK reads its instruments), or whichever
thread finds it long. Counters are summed here and observed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._counts import QueueSummary

with suppress(ImportError):  # without the extra, nothing is recorded
    from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger("pgdurable.metrics")

RUNS_STARTED = "pgdurable.runs.started"
RUNS_FINISHED = "pgdurable.runs.finished"
RETRIES = "pgdurable.runs.retries"
START_LAG = "pgdurable.runs.start_lag"
STEP_DURATION = "pgdurable.steps.duration"
BATCH_SIZE = "pgdurable.journal.batch.size"
COMMIT_DURATION = "pgdurable.journal.commit.duration"

# Seconds, as OpenTelemetry's semantic conventions advise for durations.
_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]
_ENTRIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
_COUNTERS = {
    RUNS_STARTED: ("{run}", "Attempts of runs whose handler began (first starts, retries, "
                            "resumptions)"),
    RUNS_FINISHED: ("{run}", "Runs this process ended, by status: completed, failed or cancelled"),
    RETRIES: ("{retry}", "Retries scheduled after a handler or a step failed"),
}
_HISTOGRAMS = {
    START_LAG: ("s", _SECONDS, "From when a run was due to when its handler began"),
    STEP_DURATION: ("s", _SECONDS,
                    "How long the code of a step ran (steps returned from the journal: none)"),
    BATCH_SIZE: ("{entry}", _ENTRIES, "Journal entries and run transitions written in one commit"),
    COMMIT_DURATION: ("s", _SECONDS, "How long one journal batch took to write and commit"),
}
_BACKLOG = 20_000  # measurements queued before the thread that finds them hands them over
_FRESH = 1.0  # seconds a queue reading serves the other gauge of a collection

Attributes = tuple[tuple[str, str], ...]  # hashable, to sum counters by them

# The app's answers to what is observed: the queue, and its worker's
# executor threads as (busy, all), None without a worker in this process.
QueueReader = Callable[[], "QueueSummary"]
ThreadsReader = Callable[[], "tuple[int, int] | None"]


class Instruments:
    """The instruments of one app, made on the meter its provider gave."""

    def __init__(self, meter: Any, queue: QueueReader, threads: ThreadsReader) -> None:
        self._pending: deque[tuple[str, float, Attributes]] = deque()
        self._handing = threading.Lock()
        self._totals: dict[str, dict[Attributes, float]] = {name: {} for name in _COUNTERS}
        self._histograms = {
            name: meter.create_histogram(name, unit=unit, description=description,
                                         explicit_bucket_boundaries_advisory=buckets)
            for name, (unit, buckets, description) in _HISTOGRAMS.items()}
        for name, (unit, description) in _COUNTERS.items():
            meter.create_observable_counter(name, [partial(self._total, name)], unit=unit,
                                            description=description)
        queue_reading = _QueueReading(queue)
        meter.create_observable_gauge(
            "pgdurable.queue.depth", [queue_reading.depth], unit="{run}",
            description="Unfinished runs by function and status (of at most 10,000 counted)")
        meter.create_observable_gauge(
            "pgdurable.queue.oldest_ready_age", [queue_reading.oldest_ready_age], unit="s",
            description="How long the oldest run ready to start has waited (0: none waits)")
        meter.create_observable_gauge(
            "pgdurable.worker.threads", [_threads_callback(threads)], unit="{thread}",
            description="This process's executor threads, by state: busy or idle")

    def record(self, name: str, value: float, attributes: Attributes = ()) -> None:
        """Queue a measurement (a deque's append is atomic: no lock here)."""
        self._pending.append((name, value, attributes))
        if len(self._pending) > _BACKLOG and self._handing.acquire(blocking=False):
            try:
                self._hand_over()
            finally:
                self._handing.release()

    def _hand_over(self) -> None:
        """Sum the queued counts, and record the queued values in the SDK's
        histograms (under `_handing`)."""
        while True:
            try:
                name, value, attributes = self._pending.popleft()
            except IndexError:
                return
            if (totals := self._totals.get(name)) is not None:
                totals[attributes] = totals.get(attributes, 0) + value
            else:
                self._histograms[name].record(value, dict(attributes))

    def _total(self, name: str, options: CallbackOptions) -> Iterable[Observation]:
        """A counter's totals, at a collection: the queue is handed over
        first, so its histograms are read with everything recorded too."""
        with self._handing:
            self._hand_over()
            return [Observation(total, dict(attributes))
                    for attributes, total in self._totals[name].items()]


class _QueueReading:
    """One `queue_summary` query serves both queue gauges of a collection:
    the depth's callback (called first) reads, and the age's reuses that
    reading if it is younger than a second."""

    def __init__(self, read: QueueReader) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._last: tuple[float, QueueSummary | None] = (float("-inf"), None)

    def _summary(self, *, reuse: bool) -> QueueSummary | None:
        with self._lock:
            at, summary = self._last
            if not reuse or time.monotonic() - at >= _FRESH:
                try:
                    summary = self._read()
                except Exception as exc:  # an outage: no reading, not a failed collection
                    log.debug("cannot read the queue for metrics: %r", exc)
                    summary = None
                self._last = (time.monotonic(), summary)
            return summary

    def depth(self, options: CallbackOptions) -> Iterable[Observation]:
        summary = self._summary(reuse=False)
        if summary is None:
            return []
        return [Observation(count, {"pgdurable.function_id": function_id, "pgdurable.status": status})
                for function_id, counts in summary.counts.by_function.items()
                for status, count in counts.items()]

    def oldest_ready_age(self, options: CallbackOptions) -> Iterable[Observation]:
        summary = self._summary(reuse=True)
        if summary is None:
            return []
        age = summary.oldest_ready_age
        return [Observation(0.0 if age is None else max(0.0, age.total_seconds()))]


def _threads_callback(threads: ThreadsReader) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        counts = threads()
        if counts is None:
            return []
        busy, total = counts
        return [Observation(busy, {"pgdurable.state": "busy"}),
                Observation(total - busy, {"pgdurable.state": "idle"})]
    return observe
