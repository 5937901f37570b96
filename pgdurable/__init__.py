"""pgdurable: durable execution for Python apps, on their own PostgreSQL."""

from ._app import Durable
from ._context import AsyncContext, Context
from ._counts import QueueSummary, RunCounts
from ._doctor import Check
from ._events import Event
from ._health import Health
from ._logs import RunLogFilter
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
from ._registry import EventTrigger, FunctionInfo, WorkerInfo
from ._retention import Retention
from ._rls import as_user, rls_bypass
from ._runs import Run, RunError, RunStatus, StepInfo, WaitInfo
from ._steps import AsyncStep, Step
from ._version import __version__ as __version__
from .errors import (
    ConfigurationError,
    DurableError,
    InvalidEventError,
    MigrationError,
    NewerSchemaError,
    NonRetriableError,
    NotFoundError,
    PayloadTooLargeError,
    RetryAfterError,
    RlsContextError,
    SerializationError,
    StepError,
    StepOrderError,
    UnavailableError,
)

__all__ = [
    "AsyncContext",
    "AsyncStep",
    "Batch",
    "Cancel",
    "Check",
    "Concurrency",
    "ConfigurationError",
    "Context",
    "Debounce",
    "Durable",
    "DurableError",
    "Event",
    "EventTrigger",
    "FunctionInfo",
    "FunctionOptions",
    "Health",
    "InvalidEventError",
    "MigrationError",
    "NewerSchemaError",
    "NonRetriableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Priority",
    "QueueSummary",
    "RateLimit",
    "Retention",
    "RetryAfterError",
    "RlsContextError",
    "Run",
    "RunCounts",
    "RunError",
    "RunLogFilter",
    "RunStatus",
    "SerializationError",
    "Singleton",
    "Step",
    "StepError",
    "StepInfo",
    "StepOrderError",
    "Throttle",
    "Timeouts",
    "UnavailableError",
    "WaitInfo",
    "WorkerInfo",
    "as_user",
    "rls_bypass",
]
