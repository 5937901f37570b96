"""Exceptions that unwind a handler to change its run's state.

They are BaseExceptions, so that a handler's `except Exception` does not
swallow them; the worker turns each into the run's transition.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ._records import StepRecord


class Suspend(BaseException):
    """The run is queued again at `retry_at` to retry failed steps; `records`
    are their journal entries (several when parallel branches failed)."""

    def __init__(self, records: list[StepRecord], retry_at: datetime) -> None:
        super().__init__(", ".join(record.key for record in records))
        self.records = records
        self.retry_at = retry_at

    @classmethod
    def merge(cls, suspends: list[Suspend]) -> Suspend:
        """One suspension for several branches: every entry, the earliest retry."""
        records = [record for suspend in suspends for record in suspend.records]
        return cls(records, min(suspend.retry_at for suspend in suspends))


class Cancelled(BaseException):
    """The run was cancelled; raised at a step boundary. `error` is the
    run's error document: why (by request, or a timeout)."""

    def __init__(self, error: dict[str, Any] | None = None) -> None:
        self.error = error or {"type": "Cancelled", "message": "cancelled by request",
                               "traceback": None}
        super().__init__(self.error["message"])

    @classmethod
    def timeout(cls, which: str, limit: timedelta) -> Cancelled:
        verb = "start" if which == "start" else "finish"
        return cls({"type": "TimeoutError", "traceback": None,
                    "message": f"timeouts.{which}: the run did not {verb} within {limit}"})


class Park(BaseException):
    """The run leaves its thread to sleep or wait.

    `record` is the sleeping step's journal entry, to write with the run's
    move to `sleeping` until `until`; None when the run is parked in the
    database already (a wait or an invoke), or was lost to another worker.
    """

    def __init__(self, record: StepRecord | None = None, until: datetime | None = None) -> None:
        super().__init__(record.key if record else "parked")
        self.record = record
        self.until = until
