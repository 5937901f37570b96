"""Parsing of durations ("30s", "1h30m", seconds, timedelta) and instants."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from .errors import ConfigurationError

Duration = timedelta | float | int | str

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Duration, *, what: str = "duration") -> timedelta:
    """Return `value` as a non-negative timedelta, or raise ConfigurationError."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a duration, not a bool")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise ConfigurationError(
            f"{what} must be a timedelta, a number of seconds or a string like '5m', "
            f"not {type(value).__name__}"
        )
    if seconds < 0 or seconds != seconds:
        raise ConfigurationError(f"{what} must not be negative: {value!r}")
    return timedelta(seconds=seconds)


def _parse_text(text: str, what: str) -> float:
    compact = text.replace(" ", "").lower()
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ConfigurationError(
            f"{what} {text!r} is not a duration; use forms like '30s', '5m', '1h30m', '2d'"
        )
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def require_aware(
    value: datetime, *, what: str, error: type[ValueError] = ConfigurationError
) -> datetime:
    """Reject naive datetimes: their meaning depends on the host's zone."""
    if not isinstance(value, datetime):
        raise error(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise error(
            f"{what} is a naive datetime; give a timezone-aware one, e.g. datetime.now(UTC)"
        )
    return value


def parse_moment(text: str, *, now: datetime) -> datetime:
    """A time as people type it (the CLI, the dashboard): ISO 8601 with a
    UTC offset, or a duration before `now` ("90m", "2d")."""
    try:
        return now - parse_duration(text)
    except ConfigurationError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is neither an ISO 8601 time nor a duration ago such as 2h") from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"{text!r} has no UTC offset, e.g. +00:00")
    return parsed
