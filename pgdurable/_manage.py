"""What each call of the management API does, written once for the sync and
the async API.

Each operation is a generator: it checks its arguments, then yields what it
needs done and receives the result: a `Query` (on a pooled connection of
its own, or the caller's `conn=`), an `Atomic` group of queries (in one
transaction), a `Send`, or a `Pause`. The drivers of _database.py do these
on sync or async connections; the rules (validation, what is audited, when
a cancel is certain) live only here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, get_args

from psycopg import errors as pg_errors
from pydantic import BaseModel

from ._counts import QueueSummary, RunCounts
from ._durations import require_aware
from ._events import Event, PreparedEvent, check_name, prepare
from ._functions import (
    DEFAULT_RETRIES,
    FunctionDef,
    SendSpec,
    send_spec,
    specs_json,
    start_options,
    with_computed_keys,
)
from ._registry import EventTrigger, FunctionInfo, WorkerInfo
from ._replay import FRESH
from ._runs import Run, RunStatus, StepInfo, WaitInfo
from ._store import Query, Store
from ._telemetry import Telemetry
from .errors import ConfigurationError, InvalidEventError, NotFoundError, PayloadTooLargeError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait this long (a sleep, or an asyncio.sleep)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Atomic:
    """Run `op`'s queries in one transaction (the caller's, with `conn=`),
    committed before the operation goes on; its result is sent back."""

    op: Op[Any]


@dataclass(frozen=True, slots=True)
class Send:
    """Store `events` and create the runs of the functions `specs` (JSON:
    see Store.send_events) says they trigger; on a pooled connection, a
    worker of this process may start some at once: of the `plain` runs
    (event index from 1, function id), those without options."""

    events: list[PreparedEvent]
    specs: str
    plain: list[tuple[int, str]]
    generated: bool


Op = Generator["Query[Any] | Atomic | Send | Pause", Any, T]

# How wait_for_run polls: from 5 ms, doubling, to 200 ms between reads.
_FIRST_POLL, _LAST_POLL = 0.005, 0.2


class Management:
    """The operations of one app, on its registry and settings."""

    def __init__(
        self, store: Store, functions: dict[str, FunctionDef],
        triggers: dict[str, list[FunctionDef]], schemas: dict[str, type[BaseModel]],
        telemetry: Telemetry, *, max_event_bytes: int,
    ) -> None:
        """The dicts are the app's registry, read as they are when an
        operation runs (functions registered later count)."""
        self._store = store
        self._functions = functions
        self._triggers = triggers
        self._schemas = schemas
        self._telemetry = telemetry
        self._max_event_bytes = max_event_bytes
        self._specs: dict[str, tuple[FunctionDef, SendSpec]] = {}

    # -- events -----------------------------------------------------------

    def send(self, events: list[Event], *, generated: bool = False) -> Op[list[str]]:
        """Store events and create the runs they trigger (see Durable.send)."""
        with self._telemetry.sending([e.name for e in events]) as trace_json:
            prepared = [prepare(e, self._schemas.get(e.name), max_bytes=self._max_event_bytes,
                                generated=generated, trace_json=trace_json) for e in events]
            unique = list({p.id: p for p in reversed(prepared)}.values())[::-1]
            triggered = {name: self._triggers[name] for name in {e.name for e in unique}
                         if self._triggers.get(name)}
            specs = {name: [self._spec(f) for f in fdefs] for name, fdefs in triggered.items()}
            unique = [with_computed_keys(e, specs.get(e.name, ())) for e in unique]
            plain = [(index, fdef.id) for index, event in enumerate(unique, start=1)
                     for fdef in triggered.get(event.name, ()) if not fdef.has_run_options]
            if trace_json is not None:
                self._telemetry.sent([p.id for p in unique])
            try:
                yield Send(unique, specs_json(specs), plain, generated)
            except pg_errors.InvalidParameterValue as exc:  # refused by SQL: a key field missing...
                raise InvalidEventError(exc.diag.message_primary or str(exc)) from None
            except pg_errors.ProgramLimitExceeded as exc:
                raise PayloadTooLargeError(exc.diag.message_primary or str(exc)) from None
        return [p.id for p in prepared]

    def _spec(self, fdef: FunctionDef) -> SendSpec:
        """`fdef`'s send spec, made once per registration."""
        cached = self._specs.get(fdef.id)
        if cached is None or cached[0] is not fdef:
            cached = self._specs[fdef.id] = (fdef, send_spec(fdef))
        return cached[1]

    def get_event(self, event_id: str) -> Op[Event | None]:
        result: Event | None = yield self._store.event(event_id)
        return result

    def list_events(
        self, *, name: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 100, after: str | None = None,
    ) -> Op[list[Event]]:
        query = {
            "name": name, "since": maybe_aware(since, "since"),
            "until": maybe_aware(until, "until"), "limit": positive(limit, "limit"),
            "after": after,
        }
        result: list[Event] = yield self._store.list_events(query)
        return result

    # -- runs -------------------------------------------------------------

    def get_run(self, run_id: str) -> Op[Run | None]:
        result: Run | None = yield self._store.get_run(parse_run_id(run_id))
        return result

    def wait_for_run(self, run_id: str, timeout: float) -> Op[Run]:
        """The run once it is terminal, polled with a backoff; TimeoutError
        if it is not within `timeout` seconds."""
        query = self._store.get_run(parse_run_id(run_id))
        deadline, delay = time.monotonic() + timeout, _FIRST_POLL
        while True:
            run: Run | None = yield query
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            if run.is_terminal:
                return run
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            yield Pause(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _LAST_POLL)

    def runs_for_event(self, event_id: str) -> Op[list[Run]]:
        result: list[Run] = yield self._store.runs_for_event(event_id)
        return result

    def list_runs(
        self, *, function: str | None = None, status: str | None = None,
        event: str | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = 100, after: str | None = None, parent: str | None = None,
        forked_from: str | None = None,
    ) -> Op[list[Run]]:
        if status is not None and status not in get_args(RunStatus):
            raise ConfigurationError(
                f"list_runs: status {status!r} is not one of {', '.join(get_args(RunStatus))}")
        query = {
            "function": function, "status": status, "event": event,
            "since": maybe_aware(since, "since"), "until": maybe_aware(until, "until"),
            "limit": positive(limit, "limit"),
            "after": None if after is None else parse_run_id(after),
            "parent": None if parent is None else parse_run_id(parent),
            "fork_of": None if forked_from is None else parse_run_id(forked_from),
        }
        result: list[Run] = yield self._store.list_runs(query)
        return result

    def get_steps(self, run_id: str) -> Op[list[StepInfo]]:
        result: list[StepInfo] = yield self._store.run_steps(parse_run_id(run_id))
        return result

    def get_waits(self, run_id: str) -> Op[list[WaitInfo]]:
        result: list[WaitInfo] = yield self._store.run_waits(parse_run_id(run_id))
        return result

    def count_runs(self, since: datetime, cap: int) -> Op[RunCounts]:
        query = self._store.count_runs(require_aware(since, what="since"), positive(cap, "cap"))
        result: RunCounts = yield query
        return result

    def queue_summary(self, cap: int) -> Op[QueueSummary]:
        result: QueueSummary = yield self._store.queue_summary(positive(cap, "cap"))
        return result

    def list_functions(self) -> Op[list[FunctionInfo]]:
        result: list[FunctionInfo] = yield self._store.list_functions()
        return result

    def list_workers(self) -> Op[list[WorkerInfo]]:
        result: list[WorkerInfo] = yield self._store.list_workers()
        return result

    # -- event triggers -----------------------------------------------------

    def create_event_trigger(
        self, table: str, event: str, ops: Sequence[str], columns: Sequence[str] | None,
        condition: str | None,
    ) -> Op[None]:
        """Triggers that send `event` for rows of `table` (see Durable.create_event_trigger)."""
        check_name(event)
        ops = _trigger_ops(ops)
        if columns is not None and (isinstance(columns, str) or not columns or not all(
                isinstance(c, str) for c in columns)):
            raise ConfigurationError(f"columns= takes a non-empty list of column names, not {columns!r}")
        if condition is not None and (not isinstance(condition, str) or not condition.strip()):
            raise ConfigurationError(f"condition= takes an SQL expression, not {condition!r}")
        yield from self._table(table)
        try:
            yield self._store.create_event_trigger(table, event, ops, columns, condition)
        except pg_errors.Error as exc:  # a column or a condition that Postgres refuses
            raise ConfigurationError(
                f"cannot send {event!r} from {table}: {exc.diag.message_primary}") from None

    def drop_event_trigger(self, table: str, event: str) -> Op[None]:
        check_name(event)
        yield from self._table(table)
        yield self._store.drop_event_trigger(table, event)

    def list_event_triggers(self) -> Op[list[EventTrigger]]:
        result: list[EventTrigger] = yield self._store.list_event_triggers()
        return result

    def _table(self, table: str) -> Op[None]:
        if not isinstance(table, str) or not table.strip():
            raise ConfigurationError(f"table must be a table's name, not {table!r}")
        if not (yield self._store.table_exists(table)):
            raise ConfigurationError(f"no table {table!r}")

    # -- actions ------------------------------------------------------------

    def cancel(self, run_id: str, actor: str | None) -> Op[bool]:
        """Cancel a run (see Durable.cancel); audited."""
        cancelled: bool = yield Atomic(self._cancel(parse_run_id(run_id), actor))
        if cancelled:
            yield Pause(FRESH)  # until no worker can start a step unaware of it
        return cancelled

    def _cancel(self, run_id: str, actor: str | None) -> Op[bool]:
        cancelled: bool = yield self._store.cancel_run(run_id)
        if cancelled:
            yield self._store.audit("cancel", [run_id], actor)
        return cancelled

    def cancel_runs(
        self, function: str | None, *, created_after: datetime | None,
        created_before: datetime | None, run_ids: Sequence[str] | None, actor: str | None,
    ) -> Op[int]:
        """Cancel a selection of runs (see Durable.cancel_runs); the SQL
        audits each."""
        if (function is None) == (run_ids is None):
            raise ConfigurationError("cancel_runs: give a function or run_ids, not both")
        if function is not None and function not in self._functions:
            raise ConfigurationError(f"cancel_runs: no function {function!r} is registered")
        query = {
            "function": function, "since": aware(created_after, "created_after", datetime.min),
            "until": aware(created_before, "created_before", datetime.max),
            "runs": None if run_ids is None else [parse_run_id(r) for r in run_ids],
            "who": actor,
        }
        cancelled: int = yield Atomic(_one(self._store.cancel_runs(query)))
        if cancelled:
            yield Pause(FRESH)  # until no worker can start a step unaware of them
        return cancelled

    def replay(self, run_id: str, actor: str | None) -> Op[str]:
        """Start a new run like `run_id` (see Durable.replay); audited."""
        new_id: str = yield Atomic(self._replay(parse_run_id(run_id), actor))
        return new_id

    def _replay(self, run_id: str, actor: str | None) -> Op[str]:
        run = yield from self._existing_run(run_id)
        event: Event | None = yield self._store.event(run.event_ids[0])
        retries, options = yield from self._restart(run, event)
        new_id: str | None = yield self._store.replay_run(run.id, retries, options)
        assert new_id is not None
        yield self._store.audit("replay", [run.id], actor, [{"new_run_id": new_id}])
        return new_id

    def fork(
        self, run_id: str, from_step: str, data: dict[str, Any] | BaseModel | None,
        actor: str | None,
    ) -> Op[str]:
        """Start a new run reusing `run_id`'s journal before `from_step`
        (see Durable.fork); audited."""
        if not isinstance(from_step, str):
            raise ConfigurationError(f"fork: from_step must be a step key (str), not {from_step!r}")
        new_id: str = yield Atomic(self._fork(parse_run_id(run_id), from_step, data, actor))
        return new_id

    def _fork(
        self, run_id: str, from_step: str, data: dict[str, Any] | BaseModel | None,
        actor: str | None,
    ) -> Op[str]:
        run = yield from self._existing_run(run_id)
        event: Event | None = yield self._store.event(run.event_ids[0])
        replacement = None
        if data is not None:
            if event is None:
                raise NotFoundError(f"run {run.id}: its event {run.event_ids[0]} was pruned")
            prepared = prepare(Event(event.name, data), self._schemas.get(event.name),
                               max_bytes=self._max_event_bytes)
            event = Event(event.name, json.loads(prepared.data_json), prepared.id)
            replacement = {"id": event.id, "name": event.name, "data": event.data}
        retries, options = yield from self._restart(run, event)
        try:
            new_id: str = yield self._store.fork_run(run.id, from_step, retries, options,
                                                     replacement)
        except pg_errors.NoDataFound as exc:
            hint = exc.diag.message_hint
            raise NotFoundError(f"fork: {exc.diag.message_primary}"
                                + (f" ({hint})" if hint else "")) from None
        yield self._store.audit("fork", [run.id], actor, [{
            "new_run_id": new_id, "from_step": from_step, "data": replacement is not None}])
        return new_id

    def _existing_run(self, run_id: str) -> Op[Run]:
        run: Run | None = yield self._store.get_run(run_id)
        if run is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return run

    def _restart(
        self, run: Run, event: Event | None
    ) -> Op[tuple[int, dict[str, Any] | None]]:
        """The retries and start options of a replay or fork of `run` for
        `event`: from the function's definition where this app has it; else
        the retries its workers recorded and the options the run had (None)."""
        fdef = self._functions.get(run.function_id)
        if fdef is None:
            retries: int | None = yield self._store.registered_retries(run.function_id)
            return DEFAULT_RETRIES if retries is None else retries, None
        return fdef.retries, start_options(fdef, event) if event is not None else None


def _one(query: Query[T]) -> Op[T]:
    """An operation of one query (to run it in a transaction of its own)."""
    result: T = yield query
    return result


def events_of(
    name_or_events: str | Event | Sequence[Event], data: Any, id: str | None,
    ts: datetime | None,
) -> list[Event]:
    """The events a call of `send` names."""
    if isinstance(name_or_events, str):
        return [Event(name=name_or_events, data={} if data is None else data, id=id, ts=ts)]
    if data is not None or id is not None or ts is not None:
        if not isinstance(name_or_events, Event | list | tuple):
            check_name(name_or_events)  # says what the name should be
        raise InvalidEventError("data=, id= and ts= go with an event name, not with Event objects")
    events = [name_or_events] if isinstance(name_or_events, Event) else list(name_or_events)
    for event in events:
        if not isinstance(event, Event):
            raise InvalidEventError(f"expected Event objects, got {type(event).__name__}")
    return events


_TRIGGER_OPS = ("insert", "update", "delete")


def _trigger_ops(ops: Sequence[str]) -> list[str]:
    if isinstance(ops, str) or not ops or not set(ops) <= set(_TRIGGER_OPS):
        raise ConfigurationError(f"ops= takes one or more of {', '.join(_TRIGGER_OPS)}, not {ops!r}")
    return list(dict.fromkeys(ops))


def positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive int, not {value!r}")
    return value


def aware(value: datetime | None, what: str, default: datetime) -> datetime:
    return maybe_aware(value, what) or default.replace(tzinfo=UTC)


def maybe_aware(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else require_aware(value, what=what)


def parse_run_id(run_id: str) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise ConfigurationError(f"{run_id!r} is not a run id (a UUID)") from None
