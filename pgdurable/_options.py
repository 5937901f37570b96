"""Flow-control and scheduling options of `@app.function`.

`functions.define` validates them when a function is registered; the
database enforces them (sql/functions/10_admission.sql, 11_flow.sql).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._durations import Duration

if TYPE_CHECKING:
    from ._context import AsyncContext, Context
    from ._retention import Retention

Key = str | Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most `limit` runs executing at once: per value of `key` (a dotted
    path such as "event.data.user_id", or a callable of the event) if given;
    `scope="app"` shares the key across functions. Sleeping and waiting runs
    hold no slot."""

    limit: int
    key: Key = None
    scope: Literal["function", "app"] = "function"


@dataclass(frozen=True, slots=True)
class Throttle:
    """Start at most `limit` runs per `period` (per `key`), letting `burst`
    go at once; runs over it are delayed to their turn, never dropped."""

    limit: int
    period: Duration
    burst: int = 1
    key: Key = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Start at most `limit` runs per `period` (per `key`), over any sliding
    window; events over it still get a run, recorded as `skipped`."""

    limit: int
    period: Duration
    key: Key = None


@dataclass(frozen=True, slots=True)
class Debounce:
    """Start one run, with the last event, once no event (per `key`) came
    for `period`; `timeout` caps how long a stream of events can delay it."""

    period: Duration
    key: Key = None
    timeout: Duration | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Run once for up to `max_size` events (per `key`), or for what came
    within `timeout` of the first; `ctx.events` holds them."""

    max_size: int
    timeout: Duration
    key: Key = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel a run when `event` arrives: one whose `match` field equals the
    run's triggering event's, and for which `if_` holds (the expression form
    of `wait_for_event`), within `timeout` of the run's creation."""

    event: str
    match: str | None = None
    timeout: Duration | None = None
    if_: str | None = None


@dataclass(frozen=True, slots=True)
class Priority:
    """Move a run ahead in its queue by `run` seconds, as if sent that much
    earlier (back, if negative; clamped to 600 either way): `run` is a dotted
    path to a number in the event, or a callable of the event."""

    run: Key


@dataclass(frozen=True, slots=True)
class Singleton:
    """One run at a time (per `key`): `mode="skip"` skips a new run while one
    is in progress; `mode="cancel"` cancels the one in progress instead."""

    key: Key = None
    mode: Literal["skip", "cancel"] = "skip"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """`start`: a run not started this long after it was due is cancelled.
    `finish`: a run not finished this long after it started is cancelled at
    its next step boundary."""

    start: Duration | None = None
    finish: Duration | None = None


class FunctionOptions(TypedDict, total=False):
    """The options of `@app.function` beside `id`, `event` and `retries`:
    the one list of them, which both type checkers and `functions.define`
    read (an option missing here is refused at registration)."""

    cron: str
    timezone: str
    catch_up: Literal["none", "latest", "all"]
    cancel_on: Cancel | list[Cancel] | tuple[Cancel, ...]
    timeouts: Timeouts
    on_failure: Callable[[Context], Any] | Callable[[AsyncContext], Awaitable[Any]]
    batch: Batch
    idempotency: Key
    rate_limit: RateLimit
    singleton: Singleton
    debounce: Debounce
    concurrency: Concurrency | list[Concurrency] | tuple[Concurrency, ...]
    throttle: Throttle
    priority: Priority
    retention: Retention
