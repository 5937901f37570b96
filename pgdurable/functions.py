"""Function definitions: the decorator's options, validated at import time."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .events import check_name

Handler = Callable[..., Any]

_FUNCTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")

# Options of the public API that this version does not enforce yet. They are
# refused with a clear error: a limit that is silently ignored is worse.
UNSUPPORTED_OPTIONS = (
    "cron", "concurrency", "throttle", "rate_limit", "debounce", "batch", "priority",
    "idempotency", "singleton", "cancel_on", "timeouts", "on_failure",
)


DEFAULT_RETRIES = 3  # retries after the first attempt, as in Inngest


@dataclass(frozen=True, slots=True)
class FunctionDef:
    """A registered function: its id, triggers, retry budget and handler."""

    id: str
    handler: Handler
    events: tuple[str, ...]
    retries: int
    is_async: bool


def define(
    handler: Handler, *, id: str, event: str | list[str] | tuple[str, ...] | None,
    retries: int, options: dict[str, Any],
) -> FunctionDef:
    """Validate a decorator call and build its FunctionDef."""
    if not isinstance(id, str) or not _FUNCTION_ID.match(id):
        raise ConfigurationError(
            f"function id {id!r} is invalid: 1-128 characters of letters, digits and . _ : / -, "
            "starting with a letter or digit"
        )
    given = sorted(name for name, value in options.items() if value is not None)
    for name in given:
        if name in UNSUPPORTED_OPTIONS:
            raise ConfigurationError(f"function {id!r}: option {name}= is not supported yet")
        raise ConfigurationError(f"function {id!r}: unknown option {name}=")
    if not callable(handler):
        raise ConfigurationError(f"function {id!r}: the handler is not callable")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise ConfigurationError(f"function {id!r}: retries must be an int from 0 to 100, not {retries!r}")
    return FunctionDef(
        id=id,
        handler=handler,
        events=_triggers(id, event),
        retries=retries,
        is_async=inspect.iscoroutinefunction(handler),
    )


def _triggers(function_id: str, event: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if event is None:
        raise ConfigurationError(f"function {function_id!r} needs a trigger: event=")
    names = [event] if isinstance(event, str) else list(event)
    if not names:
        raise ConfigurationError(f"function {function_id!r}: event= is an empty list")
    for name in names:
        check_name(name, what=f"event name of function {function_id!r}")
    return tuple(dict.fromkeys(names))
