"""Where a worker's claimed runs wait and execute: its lanes.

A `def` handler holds a thread for as long as it runs; an `async def` one
holds only a task on an event loop while it awaits. So each kind has a lane
of its own, with room of its own: executor threads for `def` handlers, of
which `threads` execute code at once (`ThreadLane`, see _turns), and
`async_runs` tasks on one event loop shared by every async run of the
worker (`LoopLane`). Each lane also holds runs claimed ahead, which start
as room frees up. The claimer fills each lane from the runs of its
functions; the worker's lock guards the counts.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

from ._floor import DueFloor
from ._replay import RunState
from ._turns import Turns

T = TypeVar("T")

log = logging.getLogger("pgdurable.worker")

# A run's tasks are cancelled once its handler has ended; a task that will
# not end by then is given up on.
_LEFTOVER_GRACE = 1.0

# Executor threads per turn of a ThreadLane: runs under way per handler
# executing. Between steps each waits for its journal's group commit. On W3
# at the defaults 8 per turn gave 80% of what 16 gave, and 32 about 15% more
# but held twice the runs, each of which a crash of the process costs an
# attempt (bench/RESULTS.md, issue 19).
EXECUTORS_PER_TURN = 16
MAX_EXECUTORS = 256


class Lane(ABC):
    """The runs of one kind of handler that a worker holds, and its room for them."""

    def __init__(self, function_ids: list[str], slots: int, prefetch: int,
                 draining: threading.Event) -> None:
        self.function_ids = tuple(sorted(function_ids))  # what it claims, as SQL takes it
        self.slots = slots  # runs under way at once
        self.prefetch = prefetch  # runs held beyond them, to start as they end
        self.capacity = slots + prefetch
        self.unfinished = 0  # runs held whose handler has not returned
        self.reserved = 0  # of those, slots reserved by senders not yet back (eager starts)
        self.floor = DueFloor()  # where its next claim starts
        self._draining = draining  # runs not started by then are released, not started

    def to_claim(self) -> int:
        """How many runs to claim now: none until half the room is free, or
        until half the runs claimed ahead have started (fewer, larger claims)."""
        free = self.capacity - self.unfinished
        if free <= 0 or (free * 2 < self.capacity and self.waiting() * 2 > self.prefetch):
            return 0
        return free

    def idle(self) -> int:
        """Slots that no run holds or waits for: the room for an eager start."""
        return max(0, self.slots - self.unfinished)

    @abstractmethod
    def put(self, state: RunState) -> None:
        """Start `state`'s handler when a slot is free."""

    @abstractmethod
    def waiting(self) -> int:
        """Runs waiting for a slot."""

    @abstractmethod
    def busy(self) -> int:
        """Slots executing a handler now."""

    @abstractmethod
    def start(self) -> list[threading.Thread]:
        """Start its threads; returns them."""

    @abstractmethod
    def stop(self, deadline: float) -> None:
        """Let the handlers executing end by `deadline` (monotonic); start no more."""


class ThreadLane(Lane):
    """`def` handlers: one run at a time in each executor thread, `turns` of
    them executing code at once (the others wait for their journal)."""

    def __init__(self, function_ids: list[str], turns: int, prefetch: int,
                 draining: threading.Event, execute: Callable[[RunState], None]) -> None:
        executors = max(turns, min(turns * EXECUTORS_PER_TURN, MAX_EXECUTORS))
        super().__init__(function_ids, executors, prefetch, draining)
        self.turns = Turns(turns)
        self._execute = execute
        self._ready: queue.SimpleQueue[RunState | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def put(self, state: RunState) -> None:
        self._ready.put(state)

    def waiting(self) -> int:
        return self._ready.qsize()

    def busy(self) -> int:
        return self.turns.taken

    def start(self) -> list[threading.Thread]:
        self._threads = [threading.Thread(target=self._loop, daemon=True,
                                          name=f"pgdurable-executor-{n}") for n in range(self.slots)]
        for thread in self._threads:
            thread.start()
        return self._threads

    def stop(self, deadline: float) -> None:
        for _ in self._threads:
            self._ready.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while (state := self._ready.get()) is not None:
            self.turns.take()
            try:
                if not self._draining.is_set():  # else released by the worker's stop()
                    self._execute(state)
            finally:
                self.turns.give()


class LoopLane(Lane):
    """`async def` handlers: up to `slots` runs at once, as tasks of one event
    loop in a thread of its own. What they hand to threads (`def` step
    functions, transactional steps, the database calls that park a run) runs
    in `threads` threads beside it, so no run blocks the others."""

    def __init__(self, function_ids: list[str], slots: int, prefetch: int,
                 draining: threading.Event,
                 execute: Callable[[RunState], Coroutine[Any, Any, None]],
                 threads: int) -> None:
        super().__init__(function_ids, slots, prefetch, draining)
        self._execute = execute
        self._threads = threads
        self._loop = asyncio.new_event_loop()
        self._waiting: deque[RunState] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None

    def put(self, state: RunState) -> None:
        self._loop.call_soon_threadsafe(self._offer, state)

    def waiting(self) -> int:
        return len(self._waiting)

    def busy(self) -> int:
        return len(self._running)

    def start(self) -> list[threading.Thread]:
        self._thread = threading.Thread(target=self._run, name="pgdurable-loop", daemon=True)
        self._thread.start()
        return [self._thread]

    def stop(self, deadline: float) -> None:
        if self._thread is None:
            return
        drained = asyncio.run_coroutine_threadsafe(self._drain(deadline), self._loop)
        try:
            drained.result(max(0.0, deadline - time.monotonic()) + 2 * _LEFTOVER_GRACE)
        except TimeoutError:
            log.warning("the worker's event loop did not stop: a handler blocks it")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(max(0.0, deadline - time.monotonic()) + _LEFTOVER_GRACE)

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.set_task_factory(_owned_task)
        loop.set_default_executor(ThreadPoolExecutor(self._threads, "pgdurable-async"))
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _offer(self, state: RunState) -> None:
        self._waiting.append(state)
        self._fill()

    def _fill(self) -> None:
        while self._waiting and len(self._running) < self.slots:
            state = self._waiting.popleft()
            if self._draining.is_set():
                continue  # released by the worker's stop()
            task = self._loop.create_task(self._execute(state))
            self._running.add(task)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._fill()

    async def _drain(self, deadline: float) -> None:
        """Wait for the runs executing until `deadline`, then cancel those
        still going (their handlers see CancelledError; the worker releases
        their runs)."""
        self._waiting.clear()  # released by the worker's stop()
        if not self._running:
            return
        _, late = await asyncio.wait(set(self._running), timeout=max(0.0, deadline - time.monotonic()))
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=_LEFTOVER_GRACE)


# The tasks the run executing in this context has created.
_TASKS: ContextVar[set[asyncio.Task[Any]] | None] = ContextVar("pgdurable_tasks", default=None)


def _owned_task(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """The shared loop's task factory: a task created while a run executes is that run's."""
    task = asyncio.Task(coro, loop=loop, **kwargs)
    if (owned := _TASKS.get()) is not None:
        owned.add(task)
        task.add_done_callback(owned.discard)
    return task


async def run_handler(handler: Awaitable[T]) -> T:
    """Await an async handler, then cancel the tasks it left behind (branches
    of an `asyncio.gather` that another branch's exception ended), so that
    none runs on after its run has ended."""
    owned: set[asyncio.Task[Any]] = set()
    _TASKS.set(owned)
    try:
        return await handler
    finally:
        if leftovers := [task for task in owned if not task.done()]:
            for task in leftovers:
                task.cancel()
            await asyncio.wait(leftovers, timeout=_LEFTOVER_GRACE)
