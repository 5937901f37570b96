"""Group commit of journal entries and run transitions.

Executor threads submit what they have to write and get a future; one
writer thread drains everything submitted meanwhile and writes it in one
transaction (one round trip through `Store.flush`). Concurrent runs thus
share commits, which is what makes checkpointing every step affordable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .store import Finish, StepRecord, Store

log = logging.getLogger("pgdurable.worker")

_Item = tuple[list[StepRecord], list[Finish], "Future[set[str]]"]


class Journal:
    """Batches writes from many threads into single transactions."""

    def __init__(self, pool: ConnectionPool[Any], store: Store, *, max_batch: int = 1000) -> None:
        self._pool = pool
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="pgdurable-journal", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def submit(self, steps: list[StepRecord], finishes: list[Finish]) -> Future[set[str]]:
        future: Future[set[str]] = Future()
        self._queue.put((steps, finishes, future))
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Write what was submitted before this call, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        ending = False
        while not ending:
            batch: list[_Item] = []
            item = self._queue.get()
            while True:
                if item is None:
                    ending = True
                else:
                    batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Item]) -> None:
        steps = [s for item in batch for s in item[0]]
        finishes = [f for item in batch for f in item[1]]
        delay = 0.05
        while True:
            try:
                with self._pool.connection() as conn:
                    cancelled = self._store.flush(conn, steps, finishes)
                break
            except psycopg.OperationalError as exc:
                log.warning("cannot write the journal (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:  # a bug or a constraint: fail the waiters, keep the thread
                log.exception("journal write failed")
                for *_, future in batch:
                    future.set_exception(exc)
                return
        for *_, future in batch:
            future.set_result(cancelled)
