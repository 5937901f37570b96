"""Group commit of journal entries and run transitions.

Executor threads submit what they have to write; one writer thread takes
everything submitted meanwhile and writes it in one transaction (one round
trip through `Store.flush`). Concurrent runs thus share commits, which is
what makes checkpointing every step affordable.

Everything submitted between two writes shares one future, resolved once
the batch is committed: the writer, which is the serial path, wakes each
batch's waiters with one call instead of one per entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from . import _serde as serde
from ._network import Outage
from ._records import Checkpoint, Finish, StepRecord
from ._store import Store, is_transient

log = logging.getLogger("pgdurable.worker")


class Journal:
    """Batches writes from many threads into single transactions.

    `on_written` is called from the writer thread with the run ids of every
    batch's transitions once the batch has been written (or has failed);
    `observe` with the size of each batch written in one commit, and the
    seconds that took.
    """

    def __init__(
        self, pool: ConnectionPool[Any], store: Store, outage: Outage,
        on_written: Callable[[list[str]], None] = lambda run_ids: None,
        observe: Callable[[int, float], None] = lambda entries, seconds: None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._outage = outage
        self._on_written = on_written
        self._observe = observe
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._batch = _Batch()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="pgdurable-journal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(
        self, steps: list[StepRecord], finishes: list[Finish],
        probes: list[tuple[str, int]] | None = None,
    ) -> Future[Checkpoint]:
        """Queue writes (and `probes`: runs, with their lease tokens, that only
        ask whether they were asked to cancel or lost); the future resolves
        once they are committed."""
        with self._lock:
            self._batch.steps.extend(steps)
            self._batch.finishes.extend(finishes)
            self._batch.probes.extend(probes or ())
            self._work.notify()
            return self._batch.future

    def stop(self, timeout: float | None = None) -> None:
        """Write what was submitted before this call, then end the thread."""
        with self._lock:
            self._closing = True
            self._work.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._batch.empty and not self._closing:
                    self._work.wait()
                if self._batch.empty:
                    return  # closing, and nothing left to write
                batch, self._batch = self._batch, _Batch()
            self._write(batch)
            self._on_written([f.run_id for f in batch.finishes])

    def _write(self, batch: _Batch) -> None:
        """Write a batch, retrying while Postgres is unreachable. Any other
        error is one run's bad entry: the batch is written run by run, and
        a run whose entries cannot be written fails (or is stopped), alone."""
        began = time.perf_counter()
        try:
            written = self._flush(batch.steps, batch.finishes, batch.probes)
        except Exception as exc:
            log.warning("journal batch refused (%r); writing it run by run", exc)
        else:
            batch.future.set_result(written)
            if entries := len(batch.steps) + len(batch.finishes):
                self._observe(entries, time.perf_counter() - began)
            return
        try:
            batch.future.set_result(self._write_apart(batch))
        except Exception as exc:  # keep the thread: its waiters see the error
            log.exception("journal write failed")
            batch.future.set_exception(exc)

    def _flush(
        self, steps: list[StepRecord], finishes: list[Finish], probes: list[tuple[str, int]]
    ) -> Checkpoint:
        delay = 0.05
        while True:
            try:
                with self._pool.connection() as conn:
                    written = self._store.flush(conn, steps, finishes, probes)
                self._outage.succeeded()
                return written
            except psycopg.Error as exc:
                if not is_transient(exc):
                    raise
                if isinstance(exc, psycopg.OperationalError):
                    self._outage.failed("write the journal", exc)
                else:  # a migrate swapped the functions under it
                    log.warning("cannot write the journal (%s); retrying", exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _write_apart(self, batch: _Batch) -> Checkpoint:
        """Each run's entries in a transaction of their own. A run whose
        entries are refused is failed with the reason, and reported as
        cancelled so that its handler stops at its next step."""
        by_run: dict[str, tuple[list[StepRecord], list[Finish]]] = {}
        for step in batch.steps:
            by_run.setdefault(step.run_id, ([], []))[0].append(step)
        for finish in batch.finishes:
            by_run.setdefault(finish.run_id, ([], []))[1].append(finish)
        checkpoint = self._flush([], [], batch.probes)
        cancelled, lost = set(checkpoint.cancelled), set[str]()
        for run_id, (steps, finishes) in by_run.items():
            try:
                checkpoint = self._flush(steps, finishes, [])
            except Exception as exc:
                log.error("run %s: its journal entries were refused: %s", run_id, exc)
                self._fail(run_id, (steps or finishes)[0].token, exc)
                cancelled.add(run_id)
                continue
            cancelled |= checkpoint.cancelled
            lost |= checkpoint.lost
        return Checkpoint(frozenset(cancelled), frozenset(lost), checkpoint.clock)

    def _fail(self, run_id: str, token: int, exc: Exception) -> None:
        error = {"type": "JournalWriteError", "traceback": None,
                 "message": f"the run's journal entries were refused by Postgres: "
                            f"{type(exc).__name__}: {exc}"}
        finish = Finish(run_id, token, "failed", error_json=serde.dumps(
            serde.printable(error), what="an error"))
        try:
            self._flush([], [finish], [])
        except Exception:
            log.exception("run %s: cannot record its failure either", run_id)


@dataclass(slots=True)
class _Batch:
    """What was submitted between two writes, and the future they share."""

    steps: list[StepRecord] = field(default_factory=list)
    finishes: list[Finish] = field(default_factory=list)
    probes: list[tuple[str, int]] = field(default_factory=list)
    future: Future[Checkpoint] = field(default_factory=Future)

    @property
    def empty(self) -> bool:
        return not (self.steps or self.finishes or self.probes)
