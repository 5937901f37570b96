"""Retention: how long finished runs are kept, and pruning what has expired.

The policies are recorded in the database (by workers as they start, by
`migrate` and by `app.prune`), so that any process, the CLI's included,
prunes by the same rules. What a prune does, step by step, is in sql/functions/13_retention.sql.
"""

from __future__ import annotations

import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

import psycopg

from ._durations import Duration, parse_duration
from ._store import PARTITIONS_AHEAD, Store
from .errors import ConfigurationError

log = logging.getLogger("pgdurable.prune")

DEFAULTS: dict[str, timedelta | None] = {
    "completed": timedelta(days=7), "failed": timedelta(days=30),
    "cancelled": timedelta(days=7), "skipped": timedelta(days=7), "audit": timedelta(days=400)}

DROP_SHARE = 0.9  # a closed partition goes whole once this share of its runs has expired
BATCH = 5_000  # rows per DELETE: short transactions that never hold workers up for long
# A worker's prune works a quarter of the time and rests the rest, and
# its VACUUM sleeps as autovacuum's does: the CPU and the disk are the runs'.
BACKGROUND_DUTY = 0.25
BACKGROUND_VACUUM_DELAY = "2ms"
LOCK_TIMEOUT = "200ms"  # what a detach waits for its locks before trying again
LOCK_TRIES = 10  # times a prune tries a detach or attach, before leaving it to the next prune


class _Inherit(enum.Enum):
    INHERIT = "inherit"


INHERIT = _Inherit.INHERIT
Keep = Duration | None | Literal[_Inherit.INHERIT]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished runs are kept once they finish, by status, and the
    RLS audit log (app-wide only). Durations as elsewhere ("7d", seconds, a
    timedelta); None keeps forever. A field left out takes the app's value
    (in a function's policy) or the default: 7 days for completed,
    cancelled and skipped runs, 30 for failed ones, 400 for the audit log."""

    completed: Keep = INHERIT
    failed: Keep = INHERIT
    cancelled: Keep = INHERIT
    skipped: Keep = INHERIT
    audit: Keep = INHERIT

    def __post_init__(self) -> None:
        for field in fields(self):
            _keep(getattr(self, field.name), field.name)

    def resolve(self, base: Mapping[str, timedelta | None]) -> dict[str, timedelta | None]:
        """This policy over `base` (the app's, or the defaults), as timedeltas."""
        return {name: base[name] if (value := getattr(self, name)) is INHERIT
                else _keep(value, name) for name in DEFAULTS}


def _keep(value: Keep, name: str) -> timedelta | None:
    if value is None or value is INHERIT:
        return None
    return parse_duration(value, what=f"Retention.{name}")


def function_retention(function_id: str, value: object) -> Retention | None:
    """The `retention=` option of a function, checked."""
    if value is None:
        return None
    if not isinstance(value, Retention):
        raise ConfigurationError(
            f"function {function_id!r}: retention takes Retention(completed=, failed=, ...)")
    if value.audit is not INHERIT:
        raise ConfigurationError(
            f"function {function_id!r}: Retention.audit is app-wide; give it to Durable(retention=)")
    return value


@dataclass(frozen=True, slots=True)
class Policies:
    """The app's policy and its functions' own, resolved, and how much
    history a partition holds."""

    app: dict[str, timedelta | None]
    functions: dict[str, dict[str, timedelta | None]]
    partition_interval: timedelta

    @classmethod
    def of(
        cls, app: Retention, functions: Iterable[tuple[str, Retention | None]],
        partition_interval: timedelta,
    ) -> Policies:
        base = app.resolve(DEFAULTS)
        return cls(base, {fid: own.resolve(base) for fid, own in functions if own is not None},
                   partition_interval)

    def record(self, store: Store, conn: psycopg.Connection[Any]) -> None:
        rows = [("", self.app), *self.functions.items()]
        columns = {name: [p[name] for _, p in rows] for name in DEFAULTS}
        columns["partition_interval"] = [self.partition_interval, *[None] * len(self.functions)]
        store.record_retention(conn, [fid for fid, _ in rows], columns)


Progress = Callable[[str, int], None]  # (what, how many so far)


class Pruner:
    """Removes what has expired, in short transactions on one connection
    that holds the prune lock (one pruner at a time across all processes)."""

    def __init__(self, store: Store, dedupe_window: timedelta, *, duty: float = 1.0) -> None:
        """`duty`: the share of its time a prune spends on batches, resting
        the rest between them (a worker's prune leaves the CPU and the disk
        to the runs)."""
        self._store = store
        self._dedupe_window = dedupe_window
        self._rest = 1 / duty - 1  # seconds of rest per second of work
        self._until = threading.Event()  # set: stop between batches (the worker is stopping)

    def prune(
        self, conn: psycopg.Connection[Any], as_of: datetime | None, *, dry_run: bool = False,
        progress: Progress | None = None, wait: bool = False, every: timedelta | None = None,
        until: threading.Event | None = None,
    ) -> dict[str, int] | None:
        """Remove what has expired at `as_of` (default: the database's now);
        counts by kind, or None if another process is pruning (unless
        `wait`: then after it) or, given `every`, if the last prune is more
        recent than that. Ends early, between two batches, once `until` is
        set. `conn` must be in autocommit. A dry run removes nothing and
        counts what the runs' retention would remove (events only as they
        can go now)."""
        if not self._store.prune_lock(conn, wait=wait):
            return None
        try:
            started = self._store.database_now(conn)
            last = self._store.last_prune(conn)
            if every is not None and last is not None and last + every > started:
                return None
            at = as_of or started
            self._until = until or threading.Event()
            counts = (self._count if dry_run else self._remove)(conn, at, progress or _quiet)
            if not dry_run:
                self._store.log_prune(conn, started, at, json.dumps(counts),
                                      None if every is None else started + every)
            return counts
        finally:
            self._store.prune_unlock(conn)

    def add_partitions(self, conn: psycopg.Connection[Any]) -> int:
        """Make the partitions of history ahead; 0 if their locks were not free now."""
        return self._locked(conn, partial(self._store.add_partitions, conn, PARTITIONS_AHEAD)) or 0

    def _remove(self, conn: psycopg.Connection[Any], at: datetime, progress: Progress) -> dict[str, int]:
        self.add_partitions(conn)
        self._store.close_partitions(conn, at)
        counts = {"runs": 0, "partitions_dropped": 0}
        for suffix, closed in self._store.history_partitions(conn, at):
            if self._until.is_set():
                break
            total, expired = self._store.partition_expired(conn, suffix, at)
            if closed and expired >= DROP_SHARE * total:
                # Never DELETEs instead: a partition whose locks stay busy waits for the next round.
                dropped = self._locked(conn, partial(self._store.drop_partition, conn, suffix, at))
                counts["runs"] += dropped or 0
                counts["partitions_dropped"] += dropped is not None
                progress("runs", counts["runs"])
                continue
            if expired:
                counts["runs"] += self._batches(
                    partial(self._store.delete_expired, conn, suffix, at, limit=BATCH),
                    "runs", progress, counts["runs"])
        counts["events"] = self._batches(
            lambda after: self._store.delete_events(conn, at, self._dedupe_window, after, BATCH),
            "events", progress)
        counts["audit"] = self._batches(
            lambda _: _more(self._store.delete_audit(conn, at, BATCH)), "audit", progress)
        counts["idempotency_keys"], counts["rate_limits"] = self._store.delete_bookkeeping(conn, at)
        if any(n for kind, n in counts.items() if kind != "partitions_dropped"):
            self._store.vacuum_history(conn, BACKGROUND_VACUUM_DELAY if self._rest else "0")
        return counts

    def _count(self, conn: psycopg.Connection[Any], at: datetime, progress: Progress) -> dict[str, int]:
        runs = sum(self._store.partition_expired(conn, suffix, at)[1]
                   for suffix, _ in self._store.history_partitions(conn, at))
        progress("runs", runs)
        return {"runs": runs, "events": self._store.count_events(conn, at, self._dedupe_window)}

    def _batches(
        self, delete: Callable[[Any], tuple[int, Any]], what: str, progress: Progress,
        before: int = 0,
    ) -> int:
        """Call `delete(where the last batch ended)` (None first), a batch at
        a time, until it answers that there is no more; how many it removed
        in all. Progress counts from `before`."""
        total, cursor = 0, None
        while not self._until.is_set():
            started = time.monotonic()
            removed, cursor = delete(cursor)
            total += removed
            progress(what, before + total)
            if cursor is None or self._until.wait((time.monotonic() - started) * self._rest):
                break
        return total

    def _locked(self, conn: psycopg.Connection[Any], step: Callable[[], int]) -> int | None:
        """`step` in a transaction that gives up waiting for locks after
        LOCK_TIMEOUT, tried LOCK_TRIES times a second or so apart; None if
        it never got them. A detach or attach queued behind a long
        transaction would otherwise hold every worker up behind it."""
        for attempt in range(LOCK_TRIES):
            try:
                with conn.transaction():
                    self._store.lock_timeout(conn, LOCK_TIMEOUT)
                    return step()
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                if attempt == LOCK_TRIES - 1:
                    log.info("prune put off a step to its next round: %s", exc)
                elif self._until.wait(random.uniform(0.5, 1.5)):
                    break
        return None


def _more(removed: int) -> tuple[int, bool | None]:
    """A batch's count, and a cursor that says whether to go on: a full batch
    (of a DELETE that takes the first rows each time, of one table or more)
    may have left more."""
    return removed, True if removed >= BATCH else None


def _quiet(what: str, count: int) -> None:
    del what, count
