"""pgdurable: durable execution for Python apps, on their own PostgreSQL."""

from ._app import Durable
from ._context import AsyncContext, Context
from ._events import Event
from ._options import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    FunctionOptions,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from ._retention import Retention
from ._rls import as_user, rls_bypass
from ._runs import Run, RunError, RunStatus
from ._steps import AsyncStep, Step
from .errors import (
    ConfigurationError,
    DurableError,
    InvalidEventError,
    MigrationError,
    NewerSchemaError,
    NonRetriableError,
    PayloadTooLargeError,
    RetryAfterError,
    RlsContextError,
    SerializationError,
    StepError,
    StepOrderError,
)

__all__ = [
    "AsyncContext",
    "AsyncStep",
    "Batch",
    "Cancel",
    "Concurrency",
    "ConfigurationError",
    "Context",
    "Debounce",
    "Durable",
    "DurableError",
    "Event",
    "FunctionOptions",
    "InvalidEventError",
    "MigrationError",
    "NewerSchemaError",
    "NonRetriableError",
    "PayloadTooLargeError",
    "Priority",
    "RateLimit",
    "Retention",
    "RetryAfterError",
    "RlsContextError",
    "Run",
    "RunError",
    "RunStatus",
    "SerializationError",
    "Singleton",
    "Step",
    "StepError",
    "StepOrderError",
    "Throttle",
    "Timeouts",
    "as_user",
    "rls_bypass",
]

__version__ = "0.1.0"
