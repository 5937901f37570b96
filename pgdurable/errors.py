"""Exceptions raised by pgdurable and by handlers to steer retries."""

from __future__ import annotations

from datetime import datetime, timedelta


class DurableError(Exception):
    """Base class of every exception pgdurable raises."""


class ConfigurationError(DurableError, ValueError):
    """An option given to `Durable` or `@app.function` is invalid."""


class InvalidEventError(DurableError, ValueError):
    """An event failed validation; nothing was written."""


class PayloadTooLargeError(InvalidEventError):
    """An event's serialized data is over the configured limit."""


class NotFoundError(DurableError, LookupError):
    """The run, event or step asked for does not exist (or was pruned)."""


class UnavailableError(DurableError):
    """Postgres could not be reached within `connect_timeout` (it is down,
    restarting, or the network to it failed). A send may be retried with the
    same event ids: a send that did land is not repeated."""


class SerializationError(DurableError, TypeError):
    """A value could not be serialized to JSON (event data, step output)."""


class RlsContextError(DurableError, ValueError):
    """An RLS context was asked for with a bad tag or user id, or outside a transaction."""


class MigrationError(DurableError):
    """The database schema is missing or newer than this library."""


class NewerSchemaError(MigrationError):
    """A newer pgdurable migrated the schema: this one must not migrate it
    (it would put older functions over newer tables) nor work on it."""


class NonRetriableError(DurableError):
    """Raise from a step or handler to fail at once, without retries."""


class StepOrderError(NonRetriableError):
    """On replay, the handler reached journaled steps in another order than
    they were journaled in: its code changed under a run in flight."""


class RetryAfterError(DurableError):
    """Raise from a step or handler to retry no earlier than `delay` from now
    (seconds or timedelta) or at `delay` (an aware datetime)."""

    def __init__(self, message: str, delay: float | timedelta | datetime) -> None:
        super().__init__(message)
        self.delay = delay


class StepError(DurableError):
    """A step failed for good (retries exhausted or non-retriable).

    Raised inside the function at the failing step, on first execution and on
    every replay; the function may catch it. `error_type` and `message` come
    from the step's last exception.
    """

    def __init__(self, step_id: str, error_type: str, message: str) -> None:
        super().__init__(f"step {step_id!r} failed: {error_type}: {message}")
        self.step_id = step_id
        self.error_type = error_type
        self.message = message
