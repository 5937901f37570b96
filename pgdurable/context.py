"""`Context`: what a handler receives."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from .events import Event
from .steps import AsyncStep, RunState, Step

logger = logging.getLogger("pgdurable.run")


@dataclass(frozen=True, slots=True)
class Failure:
    """`ctx.error` in an on_failure handler: the failed run and why it failed."""

    run_id: str
    function_id: str
    type: str
    message: str
    traceback: str | None

    @classmethod
    def from_doc(cls, data: Any) -> Failure:
        error = data.get("error") or {}
        return cls(str(data["run_id"]), str(data["function_id"]), str(error.get("type")),
                   str(error.get("message")), error.get("traceback"))


class Context:
    """The run's triggering event(s), identity, attempt, logger and step API.

    `ctx.step` is a `Step` in a `def` handler and an `AsyncStep` (every method
    awaited) in an `async def` one. In an on_failure handler, `ctx.event` is
    the failed run's triggering event and `ctx.error` the failure; otherwise
    `ctx.error` is None.
    """

    __slots__ = ("_state", "error", "event", "events", "function_id", "logger", "run_id", "step")

    def __init__(self, state: RunState, *, is_async: bool, failure_of: str | None = None) -> None:
        claimed = state.claimed
        self._state = state
        self.events: list[Event] = claimed.events
        self.error: Failure | None = None
        if failure_of is not None:  # an on_failure handler: the failed run's event and error
            data: Any = self.events[0].data
            self.error = Failure.from_doc(data)
            self.events = [Event.from_doc(data["event"])]
        self.event: Event = self.events[0]
        self.run_id: str = claimed.id
        self.function_id: str = claimed.function_id
        self.logger = logging.LoggerAdapter(
            logger, {"run_id": claimed.id, "function_id": claimed.function_id}
        )
        self.step: Step | AsyncStep = AsyncStep(state) if is_async else Step(state)

    @contextmanager
    def as_user(self, user_id: object, *, tag: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction acting as `user_id`: the app's RLS
        policies apply as that user (its `user_setting`, SET LOCAL). Audited;
        it commits when the block exits, and rolls back, audit row too, if it raises."""
        runtime = self._state.runtime
        with runtime.connection() as conn:
            runtime.rls.as_user(conn, user_id, tag, self)
            yield conn

    @contextmanager
    def rls_bypass(self, tag: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction that bypasses RLS (the app's bypass
        setting or role), audited under `tag`, e.g. "jobs:process-message"."""
        runtime = self._state.runtime
        with runtime.connection() as conn:
            runtime.rls.bypass(conn, tag, self)
            yield conn

    @property
    def attempt(self) -> int:
        """0 on the first try of the current step (or of the handler outside
        steps), n on its n-th retry."""
        return self._state.attempt
