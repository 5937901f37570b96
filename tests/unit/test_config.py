"""Options of `Durable` and the duration forms they accept (no database needed)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pgdurable import ConfigurationError, Durable
from pgdurable._durations import parse_duration

DSN = "postgresql://nobody@127.0.0.1:1/none"  # never connected to: nothing here opens the pool


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("250ms", 0.25),
     ("1.5h", 5400), (7, 7), (0.5, 0.5), (timedelta(minutes=2), 120)],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value).total_seconds() == seconds


@pytest.mark.parametrize("value", ["", "5", "5 parsecs", "m5", "-5s", -1, True, None, [1]])
def test_bad_durations_say_what_is_expected(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^lease .*(is not a duration|must)"):
        parse_duration(value, what="lease")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lease": "500ms"}, "at least 1 second"),
        ({"lease": "soon"}, "not a duration"),
        ({"pool_size": 0}, "pool_size"),
        ({"max_event_bytes": "1MB"}, "max_event_bytes"),
        ({"retry_backoff": "1s"}, r"\(base, cap\)"),
        ({"retry_backoff": ("10s", "1s")}, "base <= cap"),
        ({"schema": "Bad-Name"}, "schema"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Durable(DSN, **options)


def test_dsn_and_pool_are_exclusive() -> None:
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[Any] = ConnectionPool(DSN, open=False)
    with pytest.raises(ConfigurationError, match="not both"):
        Durable(DSN, pool=pool)
