"""Counts of runs for an overview (the dashboard's first page): bounded
reads, so an overview costs the same beside any amount of history."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

CAP = 10_000  # rows an overview counts at most, of each kind


@dataclass(frozen=True, slots=True)
class RunCounts:
    """Runs by function and status. `capped`: only the newest `total` (the
    cap) were counted, so there are more than these."""

    by_function: dict[str, dict[str, int]]
    total: int
    capped: bool

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]], cap: int) -> RunCounts:
        by_function: dict[str, dict[str, int]] = {}
        for function_id, status, count, *_ in rows:
            by_function.setdefault(function_id, {})[status] = count
        total = sum(n for counts in by_function.values() for n in counts.values())
        return cls(by_function, total, total >= cap)

    def of(self, status: str) -> int:
        """How many runs have this status, over every function."""
        return sum(counts.get(status, 0) for counts in self.by_function.values())


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """The unfinished runs (`counts`, as RunCounts) and how long the oldest
    run ready to start has waited for a worker (None: none is ready)."""

    counts: RunCounts
    oldest_ready_age: timedelta | None
