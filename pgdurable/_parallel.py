"""Parallel branches of one run: `ctx.step.parallel` and the step gate.

Branches run concurrently (threads in a `def` handler, tasks in an `async
def` one) and share the run's journal. Two rules keep replay exact:

- a step id belongs to one branch of a group, so that numbering repeated ids
  (`id:1`, `id:2`) never depends on which thread got there first;
- a step that parks the run (sleep, wait_for_event, invoke) first lets the
  steps executing in other branches finish and be journaled, and no new step
  starts once the run is parked: the run never executes in two places.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._control import Cancelled, Park, Suspend
from .errors import ConfigurationError

MAX_THREADS = 32  # branches of a `def` handler running at once; the rest queue


class _Group:
    """One call of `parallel`: which branch first used each step id."""

    def __init__(self) -> None:
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()

    def claim(self, step_id: str, branch: int) -> None:
        with self._lock:
            owner = self._owners.setdefault(step_id, branch)
        if owner != branch:
            raise ConfigurationError(
                f"step id {step_id!r} is used by parallel branches {min(owner, branch)} and "
                f"{max(owner, branch)}: give each branch its own step ids"
            )


_BRANCH: contextvars.ContextVar[tuple[_Group, int] | None] = contextvars.ContextVar(
    "pgdurable_branch", default=None
)


def claim_step_id(step_id: str) -> None:
    """Check that no other branch of the current parallel group uses `step_id`."""
    if (branch := _BRANCH.get()) is not None:
        branch[0].claim(step_id, branch[1])


def in_branch() -> bool:
    """Whether a parallel branch is executing in this context."""
    return _BRANCH.get() is not None


def _branches(items: Iterable[Callable[[], Any]]) -> list[Callable[[], Any]]:
    fns = list(items) if not callable(items) else []
    if not fns or not all(callable(fn) for fn in fns):
        raise TypeError(
            "parallel takes a tuple or list of callables, e.g. "
            "(lambda: ctx.step.run('a', fa), lambda: ctx.step.run('b', fb))"
        )
    return fns


def run_threads(items: Iterable[Callable[[], Any]]) -> tuple[Any, ...]:
    """Call each branch in its own thread; their results, in order, once all end."""
    fns, group = _branches(items), _Group()

    def branch(index: int, fn: Callable[[], Any]) -> Any:
        _BRANCH.set((group, index))
        return fn()

    with ThreadPoolExecutor(min(len(fns), MAX_THREADS), "pgdurable-branch") as pool:
        futures = [pool.submit(contextvars.copy_context().run, branch, n, fn)
                   for n, fn in enumerate(fns)]
        outcomes = [_outcome(future.exception, future.result) for future in futures]
    return _gather(outcomes)


async def run_tasks(items: Iterable[Callable[[], Awaitable[Any]]]) -> tuple[Any, ...]:
    """Await each branch in its own task; their results, in order, once all end."""
    fns, group = _branches(items), _Group()

    async def branch(index: int, fn: Callable[[], Awaitable[Any]]) -> Any:
        _BRANCH.set((group, index))  # a task runs in a copy of the context
        return await fn()

    tasks = [asyncio.ensure_future(branch(n, fn)) for n, fn in enumerate(fns)]
    await asyncio.wait(tasks)
    return _gather([_outcome(task.exception, task.result) for task in tasks])


def _outcome(exception: Callable[[], BaseException | None], result: Callable[[], Any]) -> Any:
    exc = exception()
    return exc if exc is not None else _Value(result())


class _Value:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _gather(outcomes: list[Any]) -> tuple[Any, ...]:
    """The branches' values, or the exception that matters most for the run."""
    errors = [o for o in outcomes if not isinstance(o, _Value)]
    if not errors:
        return tuple(o.value for o in outcomes)
    # The sleep that parked the run carries its journal entry: it goes first.
    errors.sort(key=lambda e: not (isinstance(e, Park) and e.record is not None))
    for kind in (Park, Cancelled, KeyboardInterrupt, SystemExit):
        if found := [e for e in errors if isinstance(e, kind)]:
            raise found[0]
    if suspends := [e for e in errors if isinstance(e, Suspend)]:
        raise Suspend.merge(suspends)
    raise errors[0]


class StepGate:
    """Counts the run's steps executing now, and parks the run between them.

    Used from threads (`def` handlers); `AsyncStepGate` is the same for tasks.
    Until `share` is called the run has one thread, and the gate costs nothing.
    """

    _cond: threading.Condition

    def __init__(self) -> None:
        self._shared = False
        self.executing = 0
        self.parking = False  # a step is parking the run: others wait for the outcome
        self.parked = False

    def share(self) -> None:
        """Branches are about to run: from now on steps may overlap."""
        if not self._shared:
            self._cond = threading.Condition()
            self._shared = True

    def enter(self) -> None:
        """A step starts executing; raises `Park` once the run is parked."""
        if not self._shared:
            return
        with self._cond:
            self._cond.wait_for(lambda: not self.parking)
            if self.parked:
                raise Park()
            self.executing += 1

    def leave(self) -> None:
        if not self._shared:
            return
        with self._cond:
            self.executing -= 1
            self._cond.notify_all()

    def park(self, then: Callable[[], Any]) -> Any:
        """Call `then` (which may park the run) once no other step executes."""
        if not self._shared:
            return then()
        with self._cond:
            self._cond.wait_for(lambda: not self.parking and self.executing == 0)
            if self.parked:
                raise Park()
            self.parking = True
        try:
            return then()
        except Park:
            self.parked = True
            raise
        finally:
            with self._cond:
                self.parking = False
                self._cond.notify_all()


class AsyncStepGate:
    """`StepGate` for the tasks of one event loop."""

    def __init__(self) -> None:
        self._changed: asyncio.Event | None = None
        self.executing = 0
        self.parking = False
        self.parked = False

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def enter(self) -> None:
        await self._until(lambda: not self.parking)
        if self.parked:
            raise Park()
        self.executing += 1

    def leave(self) -> None:
        self.executing -= 1
        self._notify()

    async def park(self, then: Callable[[], Awaitable[Any]]) -> Any:
        await self._until(lambda: not self.parking and self.executing == 0)
        if self.parked:
            raise Park()
        self.parking = True
        try:
            return await then()
        except Park:
            self.parked = True
            raise
        finally:
            self.parking = False
            self._notify()

