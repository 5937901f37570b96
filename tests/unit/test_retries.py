"""The retry policy (_retries.py): backoff bounds, when retrying stops, and
when the next attempt is due. No database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgdurable import NonRetriableError, RetryAfterError, SerializationError
from pgdurable._retries import Backoff, error_json, gives_up, retry_time

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def after(delay: timedelta) -> datetime:
    return NOW + delay


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 10, 40])
def test_backoff_doubles_within_jitter_and_stops_at_the_cap(failures: int) -> None:
    backoff = Backoff(base=2.0, cap=60.0)
    ceiling = min(60.0, 2.0 * 2 ** (failures - 1))
    delays = [backoff.delay(failures).total_seconds() for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > 0  # jittered: retries of many runs spread out


@pytest.mark.parametrize(("exc", "failures", "retries", "final"), [
    (ValueError("x"), 1, 3, False),
    (ValueError("x"), 4, 3, True),       # the fourth failure spends a budget of 3 retries
    (ValueError("x"), 1, 0, True),
    (NonRetriableError("x"), 1, 3, True),
    (SerializationError("x"), 1, 3, True),  # a value that cannot be stored will not be next time
    (RetryAfterError("x", delay="1s"), 2, 3, False),
])
def test_which_failures_end_retrying(exc: BaseException, failures: int, retries: int,
                                     final: bool) -> None:
    assert gives_up(exc, failures, retries) is final


def test_retry_after_sets_the_time_and_backoff_does_otherwise() -> None:
    backoff = Backoff(base=1.0, cap=1.0)
    assert retry_time(RetryAfterError("slow", delay="90s"), 1, backoff, after) == NOW + timedelta(seconds=90)
    at = datetime(2030, 5, 1, 12, 0)  # naive: read as UTC
    assert retry_time(RetryAfterError("slow", delay=at), 1, backoff, after) == at.replace(tzinfo=UTC)
    plain = retry_time(ValueError(), 1, backoff, after)
    assert NOW + timedelta(seconds=0.5) <= plain <= NOW + timedelta(seconds=1)


def test_any_exception_becomes_a_storable_error_document() -> None:
    text = error_json(ValueError("bad \x00 byte \ud800"))
    assert "\\u0000" not in text and "ValueError" in text and "bad" in text
