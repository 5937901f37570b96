"""Turns: how many `def` handlers of a worker execute code at once.

A thread that runs a handler spends most of a multi-step run waiting for
its journal entries to commit (a group commit, an fsync away). While it
waits, it lends its turn to another run's thread, so `threads` turns keep
many more runs under way without more handlers executing at once.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

_held = threading.local()  # .turns: the Turns whose turn this thread holds, if any


class Turns:
    """`count` turns, each held by one executing handler's thread.

    A turn given back goes straight to the thread that has waited longest,
    which wakes holding it. With a semaphore the giver's next take could
    barge ahead of the woken waiter, again and again: a run could wait for
    its turn, holding its lease, behind any number of later ones.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = count
        self._waiters: deque[threading.Lock] = deque()
        self._lock = threading.Lock()

    @property
    def taken(self) -> int:
        return self.count - self._free

    def take(self) -> None:
        """Wait for a turn, and hold it in this thread."""
        with self._lock:
            if self._free:
                self._free -= 1
                waiter = None
            else:
                waiter = threading.Lock()
                waiter.acquire()
                self._waiters.append(waiter)
        if waiter is not None:
            waiter.acquire()  # released by give(), which hands its turn over
        _held.turns = self

    def give(self) -> None:
        """Give back the turn this thread holds."""
        _held.turns = None
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


class lent_turn:  # lower case: used as a statement, like contextlib.suppress
    """Around a wait that needs no turn: lend this thread's turn, if it holds
    one, and take one back after (branch threads and async pools hold none)."""

    __slots__ = ("_turns",)

    def __enter__(self) -> None:
        self._turns: Turns | None = getattr(_held, "turns", None)
        if self._turns is not None:
            self._turns.give()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._turns is not None:
            self._turns.take()
