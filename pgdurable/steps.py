"""The step API (`ctx.step`) and replay.

A handler runs from the top on every attempt. Each `ctx.step.run` looks its
key up in the journal loaded with the claim: a completed step returns its
journaled value without executing, a failed one raises `StepError` again, and
a new one executes and hands its entry to the worker's journal writer.

Journal writes are group-committed and not awaited when a step finishes;
instead a step waits, before executing anything new, until every earlier
entry of its run is committed. So no step's code runs before the steps it
follows are durable, and a crash can only re-execute the last step that had
finished but not yet committed, as if it had been interrupted.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg

from . import serde
from .control import Cancelled, Park, Suspend
from .durations import Duration, parse_duration, require_aware
from .errors import (
    NonRetriableError,
    RetryAfterError,
    SerializationError,
    StepError,
    StepOrderError,
)
from .events import GENERATED_ID_PREFIX, Event, check_name
from .expressions import event_filter
from .parallel import AsyncStepGate, StepGate, claim_step_id, in_branch, run_tasks, run_threads
from .rls import CURRENT_STEP, Rls
from .store import Checkpoint, ClaimedRow, DbTime, Finish, StepRecord, WaitSpec

MAX_STEP_ID_LENGTH = 512

# How old the latest answer to "was this run asked to cancel?" may be when a
# step starts (counted from when it was asked); an older one is asked again.
# `app.cancel()` returns only this long after its commit, so no step starts,
# after it returns, on an answer given before the cancel.
FRESH = 0.1


class JournalWriter(Protocol):
    def submit(
        self, steps: list[StepRecord], finishes: list[Finish], probes: list[str] | None = None
    ) -> Future[Checkpoint]: ...


class Runtime(Protocol):
    """What steps need from the worker beyond the journal: database calls
    that park a run, and the app's registry and sending."""

    def register_wait(
        self, state: RunState, key: str, position: int, wait: WaitSpec
    ) -> tuple[str, dict[str, Any] | None]: ...

    def resolve(self, function: object) -> tuple[str, int]:
        """A registered function's id and retry budget, from its id or handler."""
        ...

    def invoke(
        self, state: RunState, key: str, position: int, function_id: str, retries: int,
        data_json: str, expires: datetime | None,
    ) -> str:
        """Start a child run and park: 'started', 'lost' or 'cancelled'."""
        ...

    def send(self, events: list[Event]) -> list[str]: ...

    @property
    def cancel_barrier(self) -> float:
        """The monotonic time before which every cancel committed has been
        heard by this process (NOTIFY), or -inf."""
        ...

    def transaction(
        self, state: RunState, body: Callable[[psycopg.Connection[Any]], StepRecord]
    ) -> Checkpoint:
        """Call `body(conn)` in a transaction and write the journal entry it
        returns in the same one."""
        ...

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled connection in a transaction that commits when the block exits."""
        ...

    @property
    def rls(self) -> Rls: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between retries: base * 2**n, capped."""

    base: float = 1.0
    cap: float = 600.0

    def delay(self, failures: int) -> timedelta:
        ceiling = min(self.cap, self.base * 2 ** max(failures - 1, 0))
        return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))


def error_json(exc: BaseException) -> str:
    """A failure's error document; whatever the exception holds, it can be stored."""
    tb = "".join(traceback.format_exception(exc))
    return serde.dumps(serde.printable(
        {"type": type(exc).__name__, "message": str(exc), "traceback": tb}), what="an error")


def gives_up(exc: BaseException, failures: int, retries: int) -> bool:
    """Whether a failure ends retrying: a kind that retrying cannot mend, or
    `failures` (this one included) over the budget of `retries`."""
    return isinstance(exc, NonRetriableError | SerializationError) or failures > retries


def retry_time(exc: BaseException, failures: int, backoff: Backoff,
               after: Callable[[timedelta], datetime]) -> datetime:
    """When to retry after a failure; `after(delay)` is a delay from now on
    the database's clock."""
    if isinstance(exc, RetryAfterError):
        delay = exc.delay
        if isinstance(delay, datetime):
            return delay if delay.tzinfo else delay.replace(tzinfo=UTC)
        return after(parse_duration(delay, what="RetryAfterError delay"))
    return after(backoff.delay(failures))


def _checked_id(step_id: object) -> str:
    """A step id as the journal can hold it; a bad one fails the step's run."""
    if not isinstance(step_id, str) or not step_id:
        raise TypeError(f"step id must be a non-empty str, not {step_id!r}")
    if len(step_id) > MAX_STEP_ID_LENGTH:
        raise NonRetriableError(f"step id {step_id[:40]!r}... is longer than "
                                f"{MAX_STEP_ID_LENGTH} characters")
    if "\x00" in step_id or (not step_id.isprintable() and not _encodable(step_id)):
        raise NonRetriableError(f"step id {step_id!r} holds a NUL or an unpaired surrogate, "
                                "which Postgres cannot store")
    return step_id


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class RunState:
    """What one execution of a run knows: journal, step numbering, checkpoints."""

    def __init__(
        self, claimed: ClaimedRow, writer: JournalWriter, prober: JournalWriter, runtime: Runtime, *,
        max_output_bytes: int, backoff: Backoff, finish_timeout: timedelta | None = None,
    ) -> None:
        self.claimed = claimed
        self.finish_timeout = finish_timeout
        self.deadline = None if finish_timeout is None else claimed.started_at + finish_timeout
        self.writer = writer
        self.prober = prober
        self.runtime = runtime
        self.max_output_bytes = max_output_bytes
        self.backoff = backoff
        self.attempt = claimed.handler_attempts
        self.cancel_requested = claimed.cancel_requested
        self.clock: DbTime = claimed.clock  # the latest answer from the database
        self.finished = False  # its outcome is submitted to the journal
        self._seen: Counter[str] = Counter()
        self._positions: dict[str, int] = {}  # key -> order in which its step began
        self._replayed_up_to: tuple[int, str] = (0, "")  # the furthest journaled step reached
        self._pending: Future[Checkpoint] | None = None
        self._lock = threading.Lock()  # parallel branches number and checkpoint steps

    def key_for(self, step_id: object) -> str:
        """The journal key of a step id: repeats are numbered in order, `id:1`, `id:2`..."""
        name = _checked_id(step_id)
        claim_step_id(name)
        with self._lock:
            key = self._next_key(name)
            self._seen[name] += 1
            self._positions[key] = len(self._positions) + 1
        return key

    def peek_key(self, step_id: object) -> str:
        """The key the next step called `step_id` will get."""
        return self._next_key(_checked_id(step_id))

    def _next_key(self, name: str) -> str:
        count = self._seen[name]
        return name if count == 0 else f"{name}:{count}"

    def position(self, key: str) -> int:
        return self._positions[key]

    def replayed(self, key: str) -> dict[str, Any] | None:
        """The step's journal entry, if any, once its order is checked."""
        entry = self.claimed.journal.get(key)
        if entry is not None and "position" in entry:
            self._check_order(key, int(entry["position"]))
        return entry

    def _check_order(self, key: str, position: int) -> None:
        """Journaled steps must be reached in the order they were journaled in
        (new steps may come between them). Parallel branches interleave in any
        order, so within them only the furthest position is kept."""
        with self._lock:
            last_position, last_key = self._replayed_up_to
            if position >= last_position:
                self._replayed_up_to = (position, key)
            elif not in_branch():
                raise StepOrderError(
                    f"step {key!r} is reached after step {last_key!r} but was journaled before "
                    "it: the function's steps changed order since this run started. Let runs "
                    "in flight finish (or cancel them) before reordering steps, or give the "
                    "moved steps new ids")

    def prior_failures(self, entry: dict[str, Any] | None) -> int:
        return 0 if entry is None else int(entry["attempts"])

    def now(self) -> datetime:
        """The database's clock, at the earliest, as the latest answer from it
        extrapolates it: every time of a run (step starts, sleeps, timeouts,
        retries, deadlines) is on the clock that SQL compares it with."""
        return self.clock.now()

    def after(self, delay: timedelta) -> datetime:
        """`delay` from now on the database's clock, never early."""
        return self.clock.latest() + delay

    def boundary(self, failures: int, *, ask: bool = True) -> Future[Checkpoint] | None:
        """Before a step executes: what to wait for first. That is the run's
        pending checkpoint (no step runs before the steps it follows are
        durable), which also answers whether the run was asked to cancel: a
        cancel that comes while the checkpoint is being written waits for
        its commit (flush locks the run's row). With `ask`, when there is
        none in flight, the latest answer (a checkpoint, the claim, or the
        worker's NOTIFY barrier) must be at most FRESH old, else the question
        is asked again (a probe: batched with other runs' probes, and
        read-only, so no flush to wait for). A cancel that returned before
        this boundary thus stops the step after it."""
        self.attempt = failures
        self.check_cancelled()
        with self._lock:
            pending = self._pending
        if pending is not None and pending.done():
            self.learn(pending.result())
            self.check_cancelled()
            pending = None
        if pending is not None or not ask:
            return pending
        if time.monotonic() - max(self.clock.sent, self.runtime.cancel_barrier) <= FRESH:
            return None
        return self.prober.submit([], [], [self.claimed.id])

    def check_cancelled(self) -> None:
        """Raise Cancelled if the run was asked to stop or is past its deadline."""
        if self.cancel_requested:
            raise Cancelled()
        if self.deadline is not None and self.now() >= self.deadline:
            assert self.finish_timeout is not None
            raise Cancelled.timeout("finish", self.finish_timeout)

    def bounded(self, expires: datetime | None) -> datetime | None:
        """A park's wake-up time, no later than the run's deadline: a run
        parked past it is woken then, to be cancelled."""
        if self.deadline is None:
            return expires
        return self.deadline if expires is None else min(expires, self.deadline)

    def after_wait(self, checkpoint: Checkpoint) -> None:
        self.learn(checkpoint)
        self.check_cancelled()

    def learn(self, checkpoint: Checkpoint) -> None:
        """Take in a journal write's answer: a cancel request, the clock."""
        if self.claimed.id in checkpoint.cancelled:
            self.cancel_requested = True
        if checkpoint.clock.received > self.clock.received:
            self.clock = checkpoint.clock

    def completed(self, key: str, value: Any, started: datetime) -> StepRecord:
        """A step's journal entry for `value`; SerializationError if it has none."""
        text = serde.dumps(value, what=f"output of step {key!r}", limit=self.max_output_bytes)
        return StepRecord(self.claimed.id, self.claimed.token, key, self.position(key),
                          "completed", text, None, self.attempt + 1, started)

    def succeeded(self, key: str, fn: Callable[..., Any], value: Any, started: datetime) -> Any:
        """Journal a step's value; return it as replay will (through the serializer)."""
        record = self.completed(key, value, started)
        self.checkpoint(record)
        return _replayed_value(fn, record)

    def failed(self, key: str, exc: BaseException, started: datetime) -> BaseException:
        """Journal a step's failure; return what to raise in the handler."""
        failures = self.attempt + 1
        final = gives_up(exc, failures, self.claimed.retries)
        record = StepRecord(
            self.claimed.id, self.claimed.token, key, self.position(key),
            "failed" if final else "retrying", None, error_json(exc), failures, started,
        )
        if not final:
            return Suspend([record], retry_time(exc, failures, self.backoff, self.after))
        self.checkpoint(record)
        return StepError(key, type(exc).__name__, str(exc))

    def checkpoint(self, record: StepRecord) -> None:
        """Hand a final entry to the writer; the next step waits until it is durable.

        Batches commit in order, so the latest one covers every branch's entries.
        """
        with self._lock:
            self._pending = self.writer.submit([record], [])


def _begin(
    state: RunState, step_id: str, fn: Callable[..., Any]
) -> tuple[str, bool, Any, Future[Checkpoint] | None]:
    """Number the step and look it up: (key, replayed?, value, what to await first).

    Raises StepError again for a step that failed for good.
    """
    key = state.key_for(step_id)
    entry = state.replayed(key)
    if entry is not None and entry["status"] == "completed":
        return key, True, serde.revive(fn, entry["output"]), None
    if entry is not None and entry["status"] == "failed":
        error = entry.get("error") or {}
        raise StepError(key, str(error.get("type")), str(error.get("message")))
    return key, False, None, state.boundary(state.prior_failures(entry))


def _finish(state: RunState, key: str, fn: Callable[..., Any], value: Any, started: datetime) -> Any:
    try:
        return state.succeeded(key, fn, value, started)
    except SerializationError as exc:
        raise state.failed(key, exc, started) from exc


def _replayed_value(fn: Callable[..., Any], record: StepRecord) -> Any:
    """A journaled value as replay returns it."""
    return serde.revive(fn, serde.loads(record.output_json or "null"))


def _transact(
    state: RunState, key: str, fn: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """Run a transactional step: `fn(conn, ...)` and its journal entry commit
    together or not at all; any failure rolls both back and counts as the
    step's failure."""
    started = state.now()
    records: list[StepRecord] = []

    def body(conn: psycopg.Connection[Any]) -> StepRecord:
        step = CURRENT_STEP.set(key)
        try:
            value = fn(conn, *args, **kwargs)
        finally:
            CURRENT_STEP.reset(step)
        if inspect.isawaitable(value):
            raise TypeError(f"transactional step {key!r} returned an awaitable: "
                            "its function must be a plain `def` taking a psycopg Connection")
        records.append(state.completed(key, value, started))
        return records[0]

    try:
        state.learn(state.runtime.transaction(state, body))
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # a bad step must not take the worker down
        raise state.failed(key, exc, started) from exc
    return _replayed_value(fn, records[0])



@dataclass(slots=True)
class _Plan:
    """A parking step looked up in the journal: its value if it is done, else
    what to do once the run's earlier checkpoints are durable."""

    value: Any = None
    then: Callable[[], Any] | None = None


def _completed(state: RunState, key: str) -> dict[str, Any] | None:
    entry = state.replayed(key)
    return entry if entry is not None and entry["status"] == "completed" else None


def _plan_sleep(state: RunState, step_id: str, until: datetime) -> _Plan:
    key = state.key_for(step_id)
    if _completed(state, key):
        return _Plan()
    position, now = state.position(key), state.now()
    status = "sleeping" if until > now else "completed"
    record = StepRecord(state.claimed.id, state.claimed.token, key, position, status,
                        serde.dumps(until.isoformat(), what="a time"), None, 1, now)

    def park() -> None:
        if status == "completed":  # nothing left to sleep
            state.checkpoint(record)
            return
        raise Park(record, state.bounded(until))

    return _Plan(then=park)


def _deadline(state: RunState, duration: Duration, what: str) -> datetime:
    return state.after(parse_duration(duration, what=what))


def _wait_spec(
    state: RunState, event: str | list[str], timeout: Duration | None, match: str | None,
    if_: str | None,
) -> WaitSpec:
    names = _one_or_many(event, str)
    if not names or not all(names):
        raise TypeError(f"wait_for_event: event must be a name or a list of names, not {event!r}")
    for name in names:
        check_name(name, what="wait_for_event: event name")
    found = event_filter(match, if_, state.claimed.events[0].to_doc(), what="wait_for_event")
    condition = found.condition
    expires = state.bounded(
        None if timeout is None else _deadline(state, timeout, "wait_for_event timeout"))
    return WaitSpec(
        names=sorted(set(names)), match_path=found.path,
        match_value_json=serde.dumps(found.value, what="the match value"),
        condition=condition.jsonpath if condition else None,
        condition_vars_json=serde.dumps(condition.variables, what="the if_ values")
        if condition else None,
        expires=expires,
    )


def _one_or_many(value: object, kind: type) -> list[Any]:
    """`value` as a list if it is one `kind` or a list/tuple of them; else []."""
    items = [value] if isinstance(value, kind) else value if isinstance(value, list | tuple) else []
    return list(items) if all(isinstance(item, kind) for item in items) else []


def _event_of(doc: dict[str, Any] | None) -> Event | None:
    return None if doc is None else Event.from_doc(doc)


def _plan_wait(state: RunState, step_id: str, wait: WaitSpec) -> _Plan:
    key = state.key_for(step_id)
    if (entry := _completed(state, key)) is not None:
        return _Plan(value=_event_of(entry["output"]))
    position = state.position(key)

    def register() -> Event | None:
        outcome, doc = state.runtime.register_wait(state, key, position, wait)
        if outcome == "matched":
            return _event_of(doc)
        if outcome == "cancelled":
            raise Cancelled()
        raise Park()  # parked until an event or the timeout; or lost to another worker

    return _Plan(then=register)


def _plan_invoke(
    state: RunState, step_id: str, function: object, data: Any, timeout: Duration | None
) -> _Plan:
    function_id, retries = state.runtime.resolve(function)
    data_json = serde.dumps({} if data is None else data, what=f"data for {function_id!r}")
    expires = state.bounded(None if timeout is None else _deadline(state, timeout, "invoke timeout"))
    key = state.key_for(step_id)
    if (entry := _completed(state, key)) is not None:
        return _Plan(value=_child_result(key, entry["output"]))
    position = state.position(key)

    def start() -> None:
        if state.runtime.invoke(state, key, position, function_id, retries, data_json,
                                expires) == "cancelled":
            raise Cancelled()
        raise Park()  # parked until the child ends; or lost to another worker

    return _Plan(then=start)


def _child_result(key: str, doc: dict[str, Any] | None) -> Any:
    """The invoked run's output, or StepError if it failed, was cancelled or timed out."""
    if doc is None:
        raise StepError(key, "TimeoutError", "the invoked run did not finish within the timeout")
    child = doc["data"]
    if child["status"] == "completed":
        return child["output"]
    error = child.get("error") or {}
    raise StepError(key, str(error.get("type") or child["status"]),
                    str(error.get("message") or f"the invoked run {child['status']}"))


def _with_ids(state: RunState, step_id: str, events: Event | list[Event]) -> list[Event]:
    """Events to send from a step, with ids derived from the run and step
    (kept if given), so a replayed send is recognised as a duplicate."""
    items = _one_or_many(events, Event)
    if not items:
        raise TypeError(f"send_event takes an Event or a non-empty list of Events, not {events!r}")
    key = state.peek_key(step_id)
    return [e if e.id is not None
            else replace(e, id=f"{GENERATED_ID_PREFIX}{state.claimed.id}/{key}/{n}")
            for n, e in enumerate(items)]


# Exceptions that unwind through a step untouched: pgdurable's own control
# flow, a task's cancellation, and the two that ask the process to stop.
_PASS_THROUGH = (Suspend, Park, Cancelled, asyncio.CancelledError, KeyboardInterrupt, SystemExit)


class Step:
    """`ctx.step` for `def` handlers."""

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._gate = StepGate()

    def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once; on replay return its journaled value."""
        return self._once(step_id, fn, lambda key: self._execute(key, fn, args, kwargs))

    def transaction(
        self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:
        """Run `fn(conn, *args, **kwargs)` once, exactly: `conn` is in a
        transaction that also writes this step's journal entry, so its writes
        commit with the step's completion or not at all."""
        return self._once(step_id, fn, lambda key: _transact(self._state, key, fn, args, kwargs))

    def _once(self, step_id: str, fn: Callable[..., Any], execute: Callable[[str], Any]) -> Any:
        """The journaled value of step `step_id`, or else `execute(key)`'s,
        once the run's earlier steps are durable."""
        key, hit, value, pending = _begin(self._state, step_id, fn)
        if hit:
            return value
        if pending is not None:
            self._state.after_wait(pending.result())
        self._gate.enter()
        try:
            return execute(key)
        finally:
            self._gate.leave()

    def _execute(self, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        started = self._state.now()
        step = CURRENT_STEP.set(key)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                raise TypeError(f"step {key!r} returned an awaitable in a sync handler; use `async def`")
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # a bad step must not take the worker down
            raise self._state.failed(key, exc, started) from exc
        finally:
            CURRENT_STEP.reset(step)
        return _finish(self._state, key, fn, value, started)

    def sleep(self, step_id: str, duration: Duration) -> None:
        """Pause the run for `duration` ("30s", "5m", "1h30m", seconds or a
        timedelta), holding no thread, lease or connection meanwhile."""
        self._follow(_plan_sleep(self._state, step_id,
                                 _deadline(self._state, duration, "sleep duration")))

    def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pause the run until `when`, a timezone-aware datetime."""
        until = require_aware(when, what="sleep_until time").astimezone(UTC)
        self._follow(_plan_sleep(self._state, step_id, until))

    def wait_for_event(
        self, step_id: str, *, event: str | list[str], timeout: Duration | None = None,
        match: str | None = None, if_: str | None = None,
    ) -> Event | None:
        """The first matching event received since the step before this one
        began, or None once `timeout` passes; the run holds nothing meanwhile."""
        wait = _wait_spec(self._state, event, timeout, match, if_)
        result: Event | None = self._follow(_plan_wait(self._state, step_id, wait))
        return result

    def invoke(
        self, step_id: str, *, function: str | Callable[..., Any], data: Any = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run another function as a child run and return its output; a failed,
        cancelled or timed-out child raises StepError."""
        return self._follow(_plan_invoke(self._state, step_id, function, data, timeout))

    def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once, however often the run is replayed; returns their ids."""
        to_send = _with_ids(self._state, step_id, events)
        ids: list[str] = self.run(step_id, self._state.runtime.send, to_send)
        return ids

    def parallel(self, branches: Iterable[Callable[[], Any]]) -> tuple[Any, ...]:
        """Call each branch (a callable that runs steps) in its own thread and
        return their results in order, once all have ended."""
        self._gate.share()
        return run_threads(branches)

    def _follow(self, plan: _Plan) -> Any:
        if plan.then is None:
            return plan.value
        then = plan.then

        def when_durable() -> Any:
            if (pending := self._state.boundary(0, ask=False)) is not None:
                self._state.after_wait(pending.result())
            return then()

        return self._gate.park(when_durable)


class AsyncStep:
    """`ctx.step` for `async def` handlers: the same steps, awaited."""

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._gate = AsyncStepGate()

    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (sync or async) once; on replay return its journaled value."""
        return await self._once(step_id, fn, lambda key: self._execute(key, fn, args, kwargs))

    async def transaction(
        self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:
        """Run `fn(conn, *args, **kwargs)` once, exactly, in a transaction that
        also writes this step's journal entry. `fn` is a plain `def` taking a
        psycopg Connection; it runs in a thread, not blocking the event loop."""
        return await self._once(step_id, fn, lambda key: asyncio.to_thread(
            _transact, self._state, key, fn, args, kwargs))

    async def _once(
        self, step_id: str, fn: Callable[..., Any], execute: Callable[[str], Awaitable[Any]]
    ) -> Any:
        """The journaled value of step `step_id`, or else `execute(key)`'s."""
        key, hit, value, pending = _begin(self._state, step_id, fn)
        if hit:
            return value
        if pending is not None:
            self._state.after_wait(await asyncio.wrap_future(pending))
        await self._gate.enter()
        try:
            return await execute(key)
        finally:
            self._gate.leave()

    async def _execute(self, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        started = self._state.now()
        step = CURRENT_STEP.set(key)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # a bad step must not take the worker down
            raise self._state.failed(key, exc, started) from exc
        finally:
            CURRENT_STEP.reset(step)
        return _finish(self._state, key, fn, value, started)

    async def sleep(self, step_id: str, duration: Duration) -> None:
        """Pause the run for `duration`, holding nothing meanwhile."""
        await self._follow(_plan_sleep(self._state, step_id,
                                 _deadline(self._state, duration, "sleep duration")))

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pause the run until `when`, a timezone-aware datetime."""
        until = require_aware(when, what="sleep_until time").astimezone(UTC)
        await self._follow(_plan_sleep(self._state, step_id, until))

    async def wait_for_event(
        self, step_id: str, *, event: str | list[str], timeout: Duration | None = None,
        match: str | None = None, if_: str | None = None,
    ) -> Event | None:
        """The first matching event, or None once `timeout` passes."""
        wait = _wait_spec(self._state, event, timeout, match, if_)
        result: Event | None = await self._follow(_plan_wait(self._state, step_id, wait))
        return result

    async def invoke(
        self, step_id: str, *, function: str | Callable[..., Any], data: Any = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run another function as a child run and return its output."""
        return await self._follow(_plan_invoke(self._state, step_id, function, data, timeout))

    async def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once, however often the run is replayed; returns their ids."""
        to_send = _with_ids(self._state, step_id, events)
        ids: list[str] = await self.run(step_id, self._state.runtime.send, to_send)
        return ids

    async def parallel(self, branches: Iterable[Callable[[], Awaitable[Any]]]) -> tuple[Any, ...]:
        """Await each branch (a callable returning an awaitable of steps) in its
        own task and return their results in order, once all have ended."""
        return await run_tasks(branches)

    async def _follow(self, plan: _Plan) -> Any:
        if plan.then is None:
            return plan.value
        then = plan.then

        async def when_durable() -> Any:
            if (pending := self._state.boundary(0, ask=False)) is not None:
                self._state.after_wait(await asyncio.wrap_future(pending))
            return then()

        return await self._gate.park(when_durable)
