"""`Context`: what a handler receives."""

from __future__ import annotations

import logging

from .events import Event
from .steps import AsyncStep, RunState, Step

logger = logging.getLogger("pgdurable.run")


class Context:
    """The run's triggering event(s), identity, attempt, logger and step API.

    `ctx.step` is a `Step` in a `def` handler and an `AsyncStep` (every method
    awaited) in an `async def` one.
    """

    __slots__ = ("_state", "event", "events", "function_id", "logger", "run_id", "step")

    def __init__(self, state: RunState, *, is_async: bool) -> None:
        claimed = state.claimed
        self._state = state
        self.events: list[Event] = claimed.events
        self.event: Event = self.events[0]
        self.run_id: str = claimed.id
        self.function_id: str = claimed.function_id
        self.logger = logging.LoggerAdapter(
            logger, {"run_id": claimed.id, "function_id": claimed.function_id}
        )
        self.step: Step | AsyncStep = AsyncStep(state) if is_async else Step(state)

    @property
    def attempt(self) -> int:
        """0 on the first try of the current step (or of the handler outside
        steps), n on its n-th retry."""
        return self._state.attempt
