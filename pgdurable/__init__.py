"""pgdurable: durable execution for Python apps, on their own PostgreSQL."""

from .app import Durable
from .context import AsyncContext, Context
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
from .events import Event
from .options import (
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
from .rls import as_user, rls_bypass
from .runs import Run, RunError, RunStatus
from .steps import AsyncStep, Step

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
