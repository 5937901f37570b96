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
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .store import Finish, StepRecord, Store

log = logging.getLogger("pgdurable.worker")


class Journal:
    """Batches writes from many threads into single transactions.

    `on_written` is called from the writer thread with the run ids of every
    batch's transitions once the batch has been written (or has failed).
    """

    def __init__(
        self, pool: ConnectionPool[Any], store: Store,
        on_written: Callable[[list[str]], None] = lambda run_ids: None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._on_written = on_written
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._steps: list[StepRecord] = []
        self._finishes: list[Finish] = []
        self._batch: Future[set[str]] = Future()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="pgdurable-journal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, steps: list[StepRecord], finishes: list[Finish]) -> Future[set[str]]:
        """Queue writes; the future resolves, with the ids of the batch's runs
        that were asked to cancel, once they are committed."""
        with self._lock:
            self._steps.extend(steps)
            self._finishes.extend(finishes)
            self._work.notify()
            return self._batch

    def stop(self, timeout: float | None = None) -> None:
        """Write what was submitted before this call, then end the thread."""
        with self._lock:
            self._closing = True
            self._work.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._steps or self._finishes or self._closing):
                    self._work.wait()
                if not (self._steps or self._finishes):
                    return  # closing, and nothing left to write
                steps, finishes, batch = self._steps, self._finishes, self._batch
                self._steps, self._finishes, self._batch = [], [], Future()
            self._write(steps, finishes, batch)
            self._on_written([f.run_id for f in finishes])

    def _write(self, steps: list[StepRecord], finishes: list[Finish], batch: Future[set[str]]) -> None:
        delay = 0.05
        while True:
            try:
                with self._pool.connection() as conn:
                    batch.set_result(self._store.flush(conn, steps, finishes))
                return
            except psycopg.OperationalError as exc:
                log.warning("cannot write the journal (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:  # a bug or a constraint: fail the waiters, keep the thread
                log.exception("journal write failed")
                batch.set_exception(exc)
                return
