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
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from . import serde
from .durations import parse_duration
from .errors import NonRetriableError, RetryAfterError, SerializationError, StepError
from .store import ClaimedRow, Finish, StepRecord


class JournalWriter(Protocol):
    def submit(self, steps: list[StepRecord], finishes: list[Finish]) -> Future[set[str]]: ...


class Suspend(BaseException):
    """Unwinds the handler so the run is queued again (a step retry).

    A BaseException, so that a handler's `except Exception` does not swallow it.
    """

    def __init__(self, record: StepRecord, retry_at: datetime) -> None:
        super().__init__(record.key)
        self.record = record
        self.retry_at = retry_at


class Cancelled(BaseException):
    """Unwinds the handler of a run that was cancelled, at a step boundary."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between retries: base * 2**n, capped."""

    base: float = 1.0
    cap: float = 600.0

    def delay(self, failures: int) -> timedelta:
        ceiling = min(self.cap, self.base * 2 ** max(failures - 1, 0))
        return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))


def error_json(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(exc))
    return serde.dumps(
        {"type": type(exc).__name__, "message": str(exc), "traceback": tb}, what="an error"
    )


def gives_up(exc: BaseException, failures: int, retries: int) -> bool:
    """Whether a failure ends retrying: a kind that retrying cannot mend, or
    `failures` (this one included) over the budget of `retries`."""
    return isinstance(exc, NonRetriableError | SerializationError) or failures > retries


def retry_time(exc: BaseException, failures: int, backoff: Backoff) -> datetime:
    now = datetime.now(UTC)
    if isinstance(exc, RetryAfterError):
        delay = exc.delay
        if isinstance(delay, datetime):
            return delay if delay.tzinfo else delay.replace(tzinfo=UTC)
        return now + parse_duration(delay, what="RetryAfterError delay")
    return now + backoff.delay(failures)


class RunState:
    """What one execution of a run knows: journal, step numbering, checkpoints."""

    def __init__(
        self, claimed: ClaimedRow, writer: JournalWriter, *, max_output_bytes: int,
        backoff: Backoff,
    ) -> None:
        self.claimed = claimed
        self.writer = writer
        self.max_output_bytes = max_output_bytes
        self.backoff = backoff
        self.attempt = claimed.handler_attempts
        self.cancel_requested = claimed.cancel_requested
        self.finished = False  # its outcome is submitted to the journal
        self._seen: Counter[str] = Counter()
        self._position = 0
        self._pending: Future[set[str]] | None = None

    def key_for(self, step_id: object) -> str:
        """The journal key of a step id: repeats are numbered in order, `id:1`, `id:2`..."""
        if not isinstance(step_id, str) or not step_id:
            raise TypeError(f"step id must be a non-empty str, not {step_id!r}")
        count = self._seen[step_id]
        self._seen[step_id] += 1
        self._position += 1
        return step_id if count == 0 else f"{step_id}:{count}"

    def replayed(self, key: str) -> dict[str, Any] | None:
        return self.claimed.journal.get(key)

    def prior_failures(self, entry: dict[str, Any] | None) -> int:
        return 0 if entry is None else int(entry["attempts"])

    def before_execute(self, failures: int) -> Future[set[str]] | None:
        """Return the pending checkpoint the next step must wait for."""
        self.attempt = failures
        if self.cancel_requested:
            raise Cancelled()
        return self._pending

    def after_wait(self, cancelled_runs: set[str]) -> None:
        if self.claimed.id in cancelled_runs:
            self.cancel_requested = True
        if self.cancel_requested:
            raise Cancelled()

    def succeeded(self, key: str, fn: Callable[..., Any], value: Any, started: datetime) -> Any:
        """Journal a step's value; return it as replay will (through the serializer)."""
        text = serde.dumps(value, what=f"output of step {key!r}", limit=self.max_output_bytes)
        self._checkpoint(StepRecord(
            self.claimed.id, self.claimed.token, key, self._position, "completed", text, None,
            self.attempt + 1, started,
        ))
        return serde.revive(fn, serde.loads(text))

    def failed(self, key: str, exc: BaseException, started: datetime) -> BaseException:
        """Journal a step's failure; return what to raise in the handler."""
        failures = self.attempt + 1
        final = gives_up(exc, failures, self.claimed.retries)
        record = StepRecord(
            self.claimed.id, self.claimed.token, key, self._position,
            "failed" if final else "retrying", None, error_json(exc), failures, started,
        )
        if not final:
            return Suspend(record, retry_time(exc, failures, self.backoff))
        self._checkpoint(record)
        return StepError(key, type(exc).__name__, str(exc))

    def _checkpoint(self, record: StepRecord) -> None:
        self._pending = self.writer.submit([record], [])


def _begin(
    state: RunState, step_id: str, fn: Callable[..., Any]
) -> tuple[str, bool, Any, Future[set[str]] | None]:
    """Number the step and look it up: (key, replayed?, value, checkpoint to await first).

    Raises StepError again for a step that failed for good.
    """
    key = state.key_for(step_id)
    entry = state.replayed(key)
    if entry is not None and entry["status"] == "completed":
        return key, True, serde.revive(fn, entry["output"]), None
    if entry is not None and entry["status"] == "failed":
        error = entry.get("error") or {}
        raise StepError(key, str(error.get("type")), str(error.get("message")))
    return key, False, None, state.before_execute(state.prior_failures(entry))


def _finish(state: RunState, key: str, fn: Callable[..., Any], value: Any, started: datetime) -> Any:
    try:
        return state.succeeded(key, fn, value, started)
    except SerializationError as exc:
        raise state.failed(key, exc, started) from exc


# Exceptions that unwind through a step untouched: pgdurable's own control
# flow, and the two that ask the process to stop.
_PASS_THROUGH = (Suspend, Cancelled, KeyboardInterrupt, SystemExit)


class Step:
    """`ctx.step` for `def` handlers."""

    def __init__(self, state: RunState) -> None:
        self._state = state

    def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once; on replay return its journaled value."""
        key, hit, value, pending = _begin(self._state, step_id, fn)
        if hit:
            return value
        if pending is not None:
            self._state.after_wait(pending.result())
        started = datetime.now(UTC)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                raise TypeError(f"step {key!r} returned an awaitable in a sync handler; use `async def`")
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # a bad step must not take the worker down
            raise self._state.failed(key, exc, started) from exc
        return _finish(self._state, key, fn, value, started)


class AsyncStep:
    """`ctx.step` for `async def` handlers: the same steps, awaited."""

    def __init__(self, state: RunState) -> None:
        self._state = state

    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (sync or async) once; on replay return its journaled value."""
        key, hit, value, pending = _begin(self._state, step_id, fn)
        if hit:
            return value
        if pending is not None:
            self._state.after_wait(await asyncio.wrap_future(pending))
        started = datetime.now(UTC)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # a bad step must not take the worker down
            raise self._state.failed(key, exc, started) from exc
        return _finish(self._state, key, fn, value, started)
