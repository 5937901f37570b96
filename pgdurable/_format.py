"""How times and durations read to people: the CLI, the dashboard, doctor."""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(at: datetime | None) -> str | None:
    """A time in UTC, to the second."""
    return None if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float) -> str:
    """A duration in the unit that reads best: ms, s, min, h or d."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_span(start: datetime | None, end: datetime | None) -> str | None:
    """How long from `start` to `end`, if both are known."""
    return None if start is None or end is None else format_duration((end - start).total_seconds())
