"""The retry policy: which failures retry, and when."""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from . import _serde as serde
from ._durations import parse_duration
from .errors import NonRetriableError, RetryAfterError, SerializationError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between retries: base * 2**n, capped."""

    base: float = 1.0
    cap: float = 600.0

    def delay(self, failures: int) -> timedelta:
        ceiling = min(self.cap, self.base * 2 ** max(failures - 1, 0))
        return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))


def error_json(exc: BaseException) -> str:
    """A failure's error document; whatever the exception holds, it can be stored."""
    tb = "".join(traceback.format_exception(exc))
    return serde.dumps(serde.printable(
        {"type": type(exc).__name__, "message": str(exc), "traceback": tb}), what="an error")


def gives_up(exc: BaseException, failures: int, retries: int) -> bool:
    """Whether a failure ends retrying: a kind that retrying cannot mend, or
    `failures` (this one included) over the budget of `retries`."""
    return isinstance(exc, NonRetriableError | SerializationError) or failures > retries


def retry_time(exc: BaseException, failures: int, backoff: Backoff,
               after: Callable[[timedelta], datetime]) -> datetime:
    """When to retry after a failure; `after(delay)` is a delay from now on
    the database's clock."""
    if isinstance(exc, RetryAfterError):
        delay = exc.delay
        if isinstance(delay, datetime):
            return delay if delay.tzinfo else delay.replace(tzinfo=UTC)
        return after(parse_duration(delay, what="RetryAfterError delay"))
    return after(backoff.delay(failures))
