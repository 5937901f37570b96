"""VACUUM of the hot tables by the workers, where autovacuum lags or is off.

Every run leaves dead row versions in `queue` (its claim and its end).
Claims step over them cheaply, but until a VACUUM their space is not reused:
the table and its indexes grow, and every scan of them with it. Autovacuum
normally keeps up; where it is off, or has not come round yet after a long
transaction ended, the workers do it.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import psycopg

from ._store import Store

log = logging.getLogger("pgdurable.worker")

# Dead row versions a hot table may gather (and at least as many as it has
# live ones) before a worker VACUUMs it.
DEAD_ENOUGH = 10_000
CHECK_EVERY = timedelta(seconds=30)
# While a snapshot held elsewhere keeps what VACUUM would remove, try less
# and less often, up to this.
LONGEST_PAUSE = timedelta(minutes=10)


class HotVacuum:
    """VACUUMs `queue` and `waits` when they hold many dead row versions;
    checks at most every CHECK_EVERY."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pause = CHECK_EVERY
        self._next = float("-inf")

    def __call__(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        """VACUUM if due; the dead row versions it removed by table."""
        if time.monotonic() < self._next:
            return {}
        dead = {table: n for table, (n, live) in self._store.hot_dead_tuples(conn).items()
                if n >= max(DEAD_ENOUGH, live)}
        removed: dict[str, int] = {}
        if dead:
            self._store.vacuum_queue(conn)
            left = self._store.hot_dead_tuples(conn)
            removed = {table: n - left[table][0] for table, n in dead.items()}
            self._learn(sum(dead.values()), sum(removed.values()))
        self._next = time.monotonic() + (self._pause if dead else CHECK_EVERY).total_seconds()
        return removed

    def _learn(self, dead: int, removed: int) -> None:
        """Back off while VACUUM removes little of what is dead."""
        if removed * 2 >= dead:
            self._pause = CHECK_EVERY
            return
        self._pause = min(self._pause * 2, LONGEST_PAUSE)
        # Once may be a query of a few seconds (a prune's counts); twice in a row is not.
        log.log(logging.WARNING if self._pause > 2 * CHECK_EVERY else logging.INFO,
                "VACUUM of the queue removed %d of %d dead row versions: a transaction, "
                "prepared transaction or replication slot holds back vacuum (see backend_xmin "
                "in pg_stat_activity); next try in %s", removed, dead, self._pause)
