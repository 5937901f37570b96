"""What workers record about themselves and their functions, for operators:
readable (app.list_functions, app.list_workers, the CLI, the dashboard)
without the app's code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._functions import FunctionDef


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A function as the last worker that served it described it."""

    id: str
    events: tuple[str, ...]
    cron: str | None
    timezone: str | None
    next_tick: datetime | None  # of its cron schedule
    retries: int
    options: dict[str, Any]  # the decorator's other options, as JSON (see describe)
    registered_at: datetime
    last_seen_at: datetime | None  # by a worker that serves it
    live_workers: int  # serving it now

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> FunctionInfo:
        (id, events, cron, timezone, next_tick, retries, options, registered_at, last_seen_at,
         live_workers) = row
        return cls(id, tuple(events), cron, timezone, next_tick, retries, options, registered_at,
                   last_seen_at, live_workers)

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(self)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process, as its heartbeat last recorded it."""

    id: str
    host: str
    pid: int
    version: str
    functions: tuple[str, ...]
    threads: int
    runs_held: int
    started_at: datetime
    last_seen_at: datetime
    live: bool  # seen within its lease: a worker not seen since has lost its runs

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WorkerInfo:
        (id, host, pid, version, functions, threads, runs_held, started_at, last_seen_at,
         live) = row
        return cls(id, host, pid, version, tuple(functions), threads, runs_held, started_at,
                   last_seen_at, live)

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(self)


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """A trigger that sends `event` for the rows a write (`op`) touches in
    `table` (app.create_event_trigger)."""

    table: str
    event: str
    op: str  # insert, update or delete
    columns: tuple[str, ...] | None  # sent; None: all
    condition: str | None  # an SQL expression over NEW (and OLD)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> EventTrigger:
        table, event, op, columns, condition = row
        return cls(table, event, op, None if columns is None else tuple(columns), condition)


def describe(fdef: FunctionDef) -> dict[str, Any]:
    """A function's registration as function_registry stores it: its
    options as JSON, keys that are callables by their qualified name."""
    options = {name: _plain(getattr(fdef, name))
               for name in ("batch", "idempotency", "rate_limit", "singleton", "debounce",
                            "throttle", "priority", "retention", "failure_of")
               if getattr(fdef, name) is not None}
    if fdef.concurrency:
        options["concurrency"] = _plain(fdef.concurrency)
    if fdef.cancel_on:
        options["cancel_on"] = _plain(fdef.cancel_on)
    timeouts = {"start": fdef.start_timeout, "finish": fdef.finish_timeout}
    if any(timeouts.values()):
        options["timeouts"] = _plain({k: v for k, v in timeouts.items() if v is not None})
    if fdef.schedule is not None:
        options["catch_up"] = fdef.schedule.catch_up
    return {
        "id": fdef.id, "events": list(fdef.events), "retries": fdef.retries,
        "cron": fdef.schedule.cron if fdef.schedule else None,
        "timezone": fdef.schedule.timezone if fdef.schedule else None, "options": options,
    }


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    if callable(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def _json_ready(info: FunctionInfo | WorkerInfo) -> dict[str, Any]:
    return {f.name: _iso(getattr(info, f.name)) for f in dataclasses.fields(info)}


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return list(value) if isinstance(value, tuple) else value
