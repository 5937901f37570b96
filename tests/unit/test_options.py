"""`@app.function` options (_functions.py, _options.py): each is checked when
the function is registered, from one list of known options. No database."""

from __future__ import annotations

from typing import Any

import pytest

from pgdurable import (
    Batch,
    Cancel,
    Concurrency,
    ConfigurationError,
    Debounce,
    Durable,
    FunctionOptions,
    Priority,
    RateLimit,
    Retention,
    Singleton,
    Throttle,
    Timeouts,
)
from pgdurable._functions import define

DSN = "postgresql://nobody@127.0.0.1:1/none"  # never connected to


def register(**options: Any) -> None:
    Durable(DSN).function(id="f", event="e", **options)(lambda ctx: None)


def test_the_typed_options_are_the_options_the_runtime_knows() -> None:
    every = {"cron": "* * * * *", "timezone": "UTC", "catch_up": "none",
             "cancel_on": [Cancel("x")], "timeouts": Timeouts(start="1m"),
             "on_failure": lambda ctx: None, "concurrency": Concurrency(1), "throttle": Throttle(1, "1s"),
             "priority": Priority(run="data.p"), "debounce": Debounce("1s"),
             "retention": Retention(completed="1d")}
    assert set(FunctionOptions.__optional_keys__) == set(every) | {
        "batch", "idempotency", "rate_limit", "singleton"}
    fdef = define(lambda ctx: None, id="f", event=None, retries=0, options=every)
    assert fdef.schedule is not None and fdef.debounce is not None and fdef.concurrency
    assert fdef.retention == Retention(completed="1d")


@pytest.mark.parametrize(("options", "message"), [
    ({"concurrancy": Concurrency(1)}, r"unknown option concurrancy="),
    ({"concurrency": Concurrency(limit=0)}, "Concurrency.limit must be an int"),
    ({"concurrency": [Concurrency(1)] * 3}, "at most 2 concurrency constraints"),
    ({"concurrency": Concurrency(1, scope="account")}, "scope must be"),
    ({"concurrency": Concurrency(1, key="data.")}, "not a dotted field path"),
    ({"throttle": Throttle(limit=1, period="0s")}, "Throttle.period must be positive"),
    ({"throttle": Throttle(limit=1, period="1s", burst=0)}, "Throttle.burst must be"),
    ({"priority": 5}, "priority takes Priority"),
    ({"cron": "every day"}, "not a valid cron expression"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"cron": "* * * * *", "catch_up": "sometimes"}, "catch_up must be one of"),
    ({"timezone": "UTC"}, "go with cron="),
    ({"batch": Batch(max_size=0, timeout="1s")}, "Batch.max_size must be an int"),
    ({"batch": Batch(10, "1s"), "singleton": Singleton()}, "batch= cannot go with"),
    ({"batch": Batch(10, "1s"), "cancel_on": [Cancel("x")]}, "batch= cannot go with cancel_on"),
    ({"rate_limit": RateLimit(limit=1, period="soon")}, "not a duration"),
    ({"singleton": Singleton(mode="replace")}, "mode"),
    ({"cancel_on": [Cancel("")]}, "event name in cancel_on .* must not be empty"),
    ({"cancel_on": [Cancel("a\x00")]}, "NUL"),
    ({"cancel_on": [Cancel("x", match="data..id")]}, "not a dotted field path"),
    ({"timeouts": Timeouts(finish="-1s")}, "duration"),
    ({"on_failure": "notify"}, "on_failure must be a handler"),
    ({"idempotency": 7}, "must be a dotted path or a callable"),
])
def test_bad_options_are_refused_by_name_at_definition(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        register(**options)


@pytest.mark.parametrize("retries", [-1, 101, True, "3", 1.5])
def test_retries_must_be_a_small_int(retries: Any) -> None:
    with pytest.raises(ConfigurationError, match="retries must be an int from 0 to 100"):
        Durable(DSN).function(id="f", event="e", retries=retries)(lambda ctx: None)


def test_a_function_needs_a_trigger_and_a_unique_id() -> None:
    app = Durable(DSN)
    with pytest.raises(ConfigurationError, match="event"):
        app.function(id="f")(lambda ctx: None)
    app.function(id="f", event="e", on_failure=lambda ctx: None)(lambda ctx: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        app.function(id="f/on-failure", event="e")(lambda ctx: None)
