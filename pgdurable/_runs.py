"""The read-only view of a run returned by the management API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

RunStatus = Literal[
    "queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled", "skipped"
]
"""Where a run stands: the first four while it is unfinished, then one of the
four terminal ones, which never change again."""
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "skipped"})


@dataclass(frozen=True, slots=True)
class RunError:
    """Why a run (or step) failed: the exception's type name, message and traceback."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> RunError | None:
        if value is None:
            return None
        return cls(str(value.get("type")), str(value.get("message")), value.get("traceback"))


@dataclass(frozen=True, slots=True)
class Run:
    """A function run as stored: its status, output or error, and timestamps."""

    id: str
    function_id: str
    status: RunStatus
    output: Any
    error: RunError | None
    attempt: int
    event_ids: tuple[str, ...]
    parent_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    forked_from: str | None = None  # the run this one is a fork of (app.fork)

    @property
    def is_terminal(self) -> bool:
        """Whether the run has finished (completed, failed, cancelled or skipped)."""
        return self.status in TERMINAL_STATUSES

    def to_dict(self, *, traceback: bool = False) -> dict[str, Any]:
        """The run as JSON-ready values (ISO 8601 times), for a status
        endpoint; the error's traceback only if asked (it shows code)."""
        return {"id": self.id, "function_id": self.function_id, "status": self.status,
                "output": self.output, "error": _error_dict(self.error, traceback),
                "attempt": self.attempt, "event_ids": list(self.event_ids),
                "parent_run_id": self.parent_run_id, "created_at": _iso(self.created_at),
                "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "forked_from": self.forked_from}

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Run:
        (run_id, function_id, status, output, error, attempt, event_ids, parent,
         created_at, started_at, finished_at, forked_from) = row
        return cls(
            id=str(run_id),
            function_id=function_id,
            status=status,
            output=output,
            error=RunError.from_json(error),
            attempt=attempt,
            event_ids=tuple(event_ids),
            parent_run_id=None if parent is None else str(parent),
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            forked_from=None if forked_from is None else str(forked_from),
        )


@dataclass(frozen=True, slots=True)
class StepInfo:
    """A step of a run as its journal holds it: `status` is completed,
    failed, retrying (failed, will be tried again), sleeping or waiting."""

    key: str
    position: int  # the order in which the run's steps began, from 1
    status: str
    attempts: int
    output: Any
    error: RunError | None
    started_at: datetime
    finished_at: datetime  # of its last attempt

    def to_dict(self) -> dict[str, Any]:
        """The step as JSON-ready values, the error with its traceback."""
        return {"key": self.key, "position": self.position, "status": self.status,
                "attempts": self.attempts, "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "output": self.output,
                "error": _error_dict(self.error, traceback=True)}

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StepInfo:
        key, position, status, attempts, output, error, started_at, finished_at = row
        return cls(key, position, status, attempts, output, RunError.from_json(error),
                   started_at, finished_at)


@dataclass(frozen=True, slots=True)
class WaitInfo:
    """What a parked run waits for: an event `event` (whose field `match`,
    if any, equals `value`, and for which `condition` holds) until `until`;
    `cancel`: the event cancels the run instead (cancel_on)."""

    step_key: str
    event: str
    match: str | None
    value: Any
    condition: str | None
    cancel: bool
    until: datetime | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WaitInfo:
        step_key, event, match, value, condition, cancel, until = row
        return cls(step_key, event, match or None, value, condition, cancel, until)


def _error_dict(error: RunError | None, traceback: bool) -> dict[str, Any] | None:
    if error is None:
        return None
    fields = {"type": error.type, "message": error.message}
    return fields | {"traceback": error.traceback} if traceback else fields


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()
