"""What crosses between the engine and its SQL: a journal entry to write
(`StepRecord`), a run's transition (`Finish`), a wait to register
(`WaitSpec`), a claimed run (`ClaimedRow`), what a journal write learned
(`Checkpoint`), and the database's clock as a statement read it (`DbTime`).
The Store (_store.py) writes and reads them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ._events import Event


@dataclass(slots=True)
class StepRecord:
    """A journal entry to write: a step's final or retrying state."""

    run_id: str
    token: int
    key: str
    position: int
    status: str  # completed | failed | retrying
    output_json: str | None
    error_json: str | None
    attempts: int
    started_at: datetime


@dataclass(slots=True)
class Finish:
    """A run transition to write: completed, failed, cancelled, or queued again."""

    run_id: str
    token: int
    status: str
    output_json: str | None = None
    error_json: str | None = None
    available_at: datetime | None = None
    retry: bool = False  # counts as a retry in the run's `attempt`
    handler_failed: bool = False  # a failure outside any step


@dataclass(frozen=True, slots=True)
class WaitSpec:
    """What a waiting step accepts: event names, an optional field that must
    equal the triggering event's, an optional jsonpath condition, a timeout."""

    names: list[str]
    match_path: list[str]
    match_value_json: str
    condition: str | None
    condition_vars_json: str | None
    expires: datetime | None


@dataclass(frozen=True, slots=True)
class DbTime:
    """A reading of the database's clock (`at`), taken by a statement sent
    at `sent` whose answer arrived at `received` (local monotonic times).
    Times of a run are kept on the database's clock, which every comparison
    in SQL uses, not on the worker's. The database's clock now is between
    `now()` and `latest()`, which differ by the statement's round trip."""

    at: datetime
    sent: float
    received: float

    def now(self) -> datetime:
        """The database's clock now, at the earliest (a window's start)."""
        return self.at + timedelta(seconds=time.monotonic() - self.received)

    def latest(self) -> datetime:
        """The database's clock now, at the latest (a start of a delay, so
        that it never ends early)."""
        return self.at + timedelta(seconds=time.monotonic() - self.sent)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a journal write learned: the runs among those it wrote or
    probed that were asked to cancel, those whose lease it no longer held
    (`lost`: nothing of theirs was written), and the database's clock."""

    cancelled: frozenset[str]
    lost: frozenset[str]
    clock: DbTime


@dataclass(slots=True)
class ClaimedRow:
    """A run leased to a worker, with what its handler needs: its events,
    its journal so far, and its retry budget."""

    id: str
    token: int
    function_id: str
    attempt: int
    handler_attempts: int
    retries: int
    cancel_requested: bool
    events: list[Event]
    traces: tuple[dict[str, str], ...]  # the contexts of the spans that sent them, if traced
    journal: dict[str, dict[str, Any]]
    first_start: bool
    due_at: datetime
    started_at: datetime
    clock: DbTime  # the database's clock at the claim
