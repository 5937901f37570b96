"""What a handler receives: `Context` (a `def` handler) and `AsyncContext`
(an `async def` one), and the context variables naming the run and the step
that execute."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from ._events import Event
from ._telemetry import trace_ids

if TYPE_CHECKING:
    from ._replay import RunState
    from ._rls import Rls
    from ._steps import AsyncStep, Step

logger = logging.getLogger("pgdurable.run")

# The run whose handler executes in this context (its app's Rls and its
# context), and the step executing: set by the worker and the step API with
# plain set/reset, as they are on the hot path. RLS audit rows read them.
CURRENT_RUN: ContextVar[tuple[Rls, BaseContext] | None] = ContextVar("pgdurable_run", default=None)
CURRENT_STEP: ContextVar[str | None] = ContextVar("pgdurable_step", default=None)


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """`ctx.logger`: its records carry `run_id`, `function_id`, `step` (the
    step executing, or None) and, when the run is traced, `trace_id` and
    `span_id` (hex), as attributes of the record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), "step": CURRENT_STEP.get(), **trace_ids(),
                           **kwargs.get("extra", {})}
        return msg, kwargs


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


class BaseContext:
    """What both kinds of handler receive: the run's triggering event(s),
    identity, attempt, logger and RLS contexts.

    In an on_failure handler, `ctx.event` is the failed run's triggering
    event and `ctx.error` the failure; otherwise `ctx.error` is None.
    """

    __slots__ = ("_state", "error", "event", "events", "function_id", "logger", "run_id")

    def __init__(self, state: RunState, *, failure_of: str | None = None) -> None:
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
        self.logger = RunLogger(logger, {"run_id": claimed.id,
                                         "function_id": claimed.function_id})

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


class Context(BaseContext):
    """What a `def` handler receives; `ctx.step` is a `Step`."""

    __slots__ = ("step",)

    def __init__(self, state: RunState, step: Step, *, failure_of: str | None = None) -> None:
        super().__init__(state, failure_of=failure_of)
        self.step = step


class AsyncContext(BaseContext):
    """What an `async def` handler receives; `ctx.step` is an `AsyncStep`,
    whose every method is awaited."""

    __slots__ = ("step",)

    def __init__(self, state: RunState, step: AsyncStep, *, failure_of: str | None = None) -> None:
        super().__init__(state, failure_of=failure_of)
        self.step = step
