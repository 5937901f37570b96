"""Flow-control and scheduling options of `@app.function`.

They are part of the public API so that code can be written against them;
this version validates them and refuses the ones it does not yet enforce
(see `functions.UNSUPPORTED_OPTIONS`), rather than silently ignoring a limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .durations import Duration

Key = str | Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class Concurrency:
    limit: int
    key: Key = None
    scope: Literal["function", "app"] = "function"


@dataclass(frozen=True, slots=True)
class Throttle:
    limit: int
    period: Duration
    burst: int = 1
    key: Key = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: int
    period: Duration
    key: Key = None


@dataclass(frozen=True, slots=True)
class Debounce:
    period: Duration
    key: Key = None
    timeout: Duration | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    max_size: int
    timeout: Duration
    key: Key = None


@dataclass(frozen=True, slots=True)
class Cancel:
    event: str
    match: str | None = None
    timeout: Duration | None = None


@dataclass(frozen=True, slots=True)
class Priority:
    run: Key


@dataclass(frozen=True, slots=True)
class Singleton:
    key: Key = None
    mode: Literal["skip", "cancel"] = "skip"


@dataclass(frozen=True, slots=True)
class Timeouts:
    start: Duration | None = None
    finish: Duration | None = None
