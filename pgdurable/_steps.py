"""The step API: `ctx.step` in `def` handlers (`Step`) and in `async def`
ones (`AsyncStep`, every method awaited).

Each method numbers its step, looks it up in the run's journal (_replay.py),
and either returns the journaled value or executes once the run's earlier
steps are durable. Steps that park the run follow a plan (_plans.py).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

import psycopg

from . import _serde as serde
from ._context import CURRENT_STEP
from ._control import Cancelled, Park, Suspend
from ._durations import Duration, require_aware
from ._events import Event
from ._parallel import AsyncStepGate, StepGate, run_tasks, run_threads
from ._plans import Plan, deadline, plan_invoke, plan_sleep, plan_wait, wait_spec, with_ids
from ._records import Checkpoint, StepRecord
from ._replay import RunState, replayed_value
from ._telemetry import observing_step
from .errors import SerializationError, StepError

if TYPE_CHECKING:
    from ._context import AsyncContext, Context

P = ParamSpec("P")
T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")

Connection = psycopg.Connection[Any]

# Exceptions that unwind through a step untouched: pgdurable's own control
# flow, a task's cancellation, and the two that ask the process to stop.
_PASS_THROUGH = (Suspend, Park, Cancelled, asyncio.CancelledError, KeyboardInterrupt, SystemExit)


def _begin(
    state: RunState, step_id: str, fn: Callable[..., Any]
) -> tuple[str, bool, Any, Future[Checkpoint] | None]:
    """Number the step and look it up: (key, replayed?, value, what to await
    first: the run's earlier steps' commit). The step's code must still see
    a fresh answer to "was the run cancelled?" right before it runs
    (`RunState.fresh`), however long it then waited for the gate or a thread.

    Raises StepError again for a step that failed for good.
    """
    key = state.key_for(step_id)
    entry = state.replayed(key)
    if entry is not None and entry["status"] == "completed":
        return key, True, serde.revive(fn, entry["output"]), None
    if entry is not None and entry["status"] == "failed":
        error = entry.get("error") or {}
        raise StepError(key, str(error.get("type")), str(error.get("message")))
    return key, False, None, state.boundary(state.prior_failures(entry), ask=False)


def _finish(state: RunState, key: str, fn: Callable[..., Any], value: Any, started: datetime) -> Any:
    try:
        return state.succeeded(key, fn, value, started)
    except SerializationError as exc:
        raise state.failed(key, exc, started) from exc


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
            with observing_step(key):
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
    return replayed_value(fn, records[0])


class Step:
    """`ctx.step` in a `def` handler."""

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._gate = StepGate()

    def run(self, step_id: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` once; on replay return its journaled value
        (revived as `fn`'s annotated return type, else as JSON gives it back)."""
        result: T = self._once(step_id, fn, lambda key: self._execute(key, fn, args, kwargs))
        return result

    def transaction(
        self, step_id: str, fn: Callable[Concatenate[Connection, P], T], /,
        *args: P.args, **kwargs: P.kwargs,
    ) -> T:
        """Run `fn(conn, *args, **kwargs)` once, exactly: `conn` is in a
        transaction that also writes this step's journal entry, so its writes
        commit with the step's completion or not at all."""
        result: T = self._once(
            step_id, fn, lambda key: _transact(self._state, key, fn, args, kwargs))
        return result

    def _once(self, step_id: str, fn: Callable[..., Any], execute: Callable[[str], Any]) -> Any:
        """The journaled value of step `step_id`, or else `execute(key)`'s,
        once the run's earlier steps are durable."""
        key, hit, value, pending = _begin(self._state, step_id, fn)
        if hit:
            return value
        if pending is not None:
            self._state.wait(pending)
        self._gate.enter()
        try:
            return execute(key)
        finally:
            self._gate.leave()

    def _execute(self, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        self._state.fresh()
        started = self._state.now()
        step = CURRENT_STEP.set(key)
        try:
            with observing_step(key):
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
        self._follow(plan_sleep(self._state, step_id,
                                deadline(self._state, duration, "sleep duration")))

    def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pause the run until `when`, a timezone-aware datetime."""
        self._follow(plan_sleep(self._state, step_id, _utc(when)))

    def wait_for_event(
        self, step_id: str, *, event: str | list[str], timeout: Duration | None = None,
        match: str | None = None, if_: str | None = None,
    ) -> Event | None:
        """The first matching event received since the step before this one
        began, or None once `timeout` passes; the run holds nothing meanwhile."""
        wait = wait_spec(self._state, event, timeout, match, if_)
        result: Event | None = self._follow(plan_wait(self._state, step_id, wait))
        return result

    @overload
    def invoke(self, step_id: str, *, function: Callable[[AsyncContext], Awaitable[T]],
               data: Any = None, timeout: Duration | None = None) -> T: ...
    @overload
    def invoke(self, step_id: str, *, function: Callable[[Context], T],
               data: Any = None, timeout: Duration | None = None) -> T: ...
    @overload
    def invoke(self, step_id: str, *, function: str,
               data: Any = None, timeout: Duration | None = None) -> Any: ...
    def invoke(
        self, step_id: str, *, function: str | Callable[..., Any], data: Any = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run another function (its id or its handler) as a child run and
        return its output; a failed, cancelled or timed-out child raises StepError."""
        return self._follow(plan_invoke(self._state, step_id, function, data, timeout))

    def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once, however often the run is replayed; returns their ids."""
        to_send = with_ids(self._state, step_id, events)
        return self.run(step_id, self._state.runtime.send, to_send)

    @overload
    def parallel(self, branches: tuple[Callable[[], T1]]) -> tuple[T1]: ...
    @overload
    def parallel(self, branches: tuple[Callable[[], T1], Callable[[], T2]]) -> tuple[T1, T2]: ...
    @overload
    def parallel(
        self, branches: tuple[Callable[[], T1], Callable[[], T2], Callable[[], T3]]
    ) -> tuple[T1, T2, T3]: ...
    @overload
    def parallel(
        self, branches: tuple[Callable[[], T1], Callable[[], T2], Callable[[], T3], Callable[[], T4]]
    ) -> tuple[T1, T2, T3, T4]: ...
    @overload
    def parallel(self, branches: Iterable[Callable[[], T]]) -> tuple[T, ...]: ...
    def parallel(self, branches: Iterable[Callable[[], Any]]) -> tuple[Any, ...]:
        """Call each branch (a callable that runs steps) in its own thread and
        return their results in order, once all have ended."""
        self._gate.share()
        return run_threads(branches)

    def _follow(self, plan: Plan) -> Any:
        if plan.then is None:
            return plan.value
        then = plan.then

        def when_durable() -> Any:
            if (pending := self._state.boundary(0, ask=False)) is not None:
                self._state.wait(pending)
            return then()

        return self._gate.park(when_durable)


class AsyncStep:
    """`ctx.step` in an `async def` handler: the same steps, awaited.

    The handler shares its event loop with the worker's other async runs, so
    nothing here blocks it: a `def` step function runs in a thread (as
    FastAPI runs a `def` endpoint), and so do the database calls that park a
    run and transactional steps.
    """

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._gate = AsyncStepGate()

    @overload
    async def run(
        self, step_id: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def run(self, step_id: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once (an `async def` fn on the loop, a
        `def` one in a thread); on replay return its journaled value."""
        return await self._once(step_id, fn, lambda key: self._execute(key, fn, args, kwargs))

    async def transaction(
        self, step_id: str, fn: Callable[Concatenate[Connection, P], T], /,
        *args: P.args, **kwargs: P.kwargs,
    ) -> T:
        """Run `fn(conn, *args, **kwargs)` once, exactly, in a transaction that
        also writes this step's journal entry. `fn` is a plain `def` taking a
        psycopg Connection; it runs in a thread, not blocking the event loop."""
        result: T = await self._once(step_id, fn, lambda key: asyncio.to_thread(
            _transact, self._state, key, fn, args, kwargs))
        return result

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
            with observing_step(key):
                if _is_async(fn):
                    if (probe := self._state.boundary(self._state.attempt)) is not None:
                        self._state.after_wait(await asyncio.wrap_future(probe))
                    value = await fn(*args, **kwargs)
                else:  # what it returns may still be awaitable: `lambda: client.get(url)`
                    value = await asyncio.to_thread(_fresh_call, self._state, fn, args, kwargs)
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
        await self._follow(plan_sleep(self._state, step_id,
                                      deadline(self._state, duration, "sleep duration")))

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pause the run until `when`, a timezone-aware datetime."""
        await self._follow(plan_sleep(self._state, step_id, _utc(when)))

    async def wait_for_event(
        self, step_id: str, *, event: str | list[str], timeout: Duration | None = None,
        match: str | None = None, if_: str | None = None,
    ) -> Event | None:
        """The first matching event, or None once `timeout` passes."""
        wait = wait_spec(self._state, event, timeout, match, if_)
        result: Event | None = await self._follow(plan_wait(self._state, step_id, wait))
        return result

    @overload
    async def invoke(self, step_id: str, *, function: Callable[[AsyncContext], Awaitable[T]],
                     data: Any = None, timeout: Duration | None = None) -> T: ...
    @overload
    async def invoke(self, step_id: str, *, function: Callable[[Context], T],
                     data: Any = None, timeout: Duration | None = None) -> T: ...
    @overload
    async def invoke(self, step_id: str, *, function: str,
                     data: Any = None, timeout: Duration | None = None) -> Any: ...
    async def invoke(
        self, step_id: str, *, function: str | Callable[..., Any], data: Any = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run another function as a child run and return its output."""
        return await self._follow(plan_invoke(self._state, step_id, function, data, timeout))

    async def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once, however often the run is replayed; returns their ids."""
        to_send = with_ids(self._state, step_id, events)
        return await self.run(step_id, self._state.runtime.send, to_send)

    @overload
    async def parallel(self, branches: tuple[Callable[[], Awaitable[T1]]]) -> tuple[T1]: ...
    @overload
    async def parallel(
        self, branches: tuple[Callable[[], Awaitable[T1]], Callable[[], Awaitable[T2]]]
    ) -> tuple[T1, T2]: ...
    @overload
    async def parallel(
        self, branches: tuple[Callable[[], Awaitable[T1]], Callable[[], Awaitable[T2]],
                              Callable[[], Awaitable[T3]]]
    ) -> tuple[T1, T2, T3]: ...
    @overload
    async def parallel(
        self, branches: tuple[Callable[[], Awaitable[T1]], Callable[[], Awaitable[T2]],
                              Callable[[], Awaitable[T3]], Callable[[], Awaitable[T4]]]
    ) -> tuple[T1, T2, T3, T4]: ...
    @overload
    async def parallel(self, branches: Iterable[Callable[[], Awaitable[T]]]) -> tuple[T, ...]: ...
    async def parallel(self, branches: Iterable[Callable[[], Awaitable[Any]]]) -> tuple[Any, ...]:
        """Await each branch (a callable returning an awaitable of steps) in its
        own task and return their results in order, once all have ended."""
        return await run_tasks(branches)

    async def _follow(self, plan: Plan) -> Any:
        if plan.then is None:
            return plan.value
        then = plan.then

        async def when_durable() -> Any:
            if (pending := self._state.boundary(0, ask=False)) is not None:
                self._state.after_wait(await asyncio.wrap_future(pending))
            return await asyncio.to_thread(then)  # it may ask the database

        return await self._gate.park(when_durable)


def _fresh_call(state: RunState, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Call `fn` once the run is known not cancelled, as of now (in the
    thread it runs in, after waiting for that thread)."""
    state.fresh()
    return fn(*args, **kwargs)


def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling `fn` gives a coroutine: an `async def` function, method,
    partial of one, or an object whose `__call__` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004


def _utc(when: datetime) -> datetime:
    return require_aware(when, what="sleep_until time").astimezone(UTC)
