"""Cron triggers: ticks, time zones, catch-up, one run per tick across processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from pgdurable import Cancel, ConfigurationError, Context, Durable
from pgdurable._functions import Schedule
from pgdurable._schedules import following_tick, ticks_to_run


def test_ticks_follow_the_time_zone_across_daylight_saving() -> None:
    nightly = Schedule("0 3 * * *", "America/New_York")
    winter = following_tick(nightly, datetime(2026, 1, 10, 12, tzinfo=UTC))
    summer = following_tick(nightly, datetime(2026, 7, 10, 12, tzinfo=UTC))
    assert winter == datetime(2026, 1, 11, 8, tzinfo=UTC)  # UTC-5
    assert summer == datetime(2026, 7, 11, 7, tzinfo=UTC)  # UTC-4


def test_six_field_crons_tick_in_seconds() -> None:
    every_5s = Schedule("* * * * * */5")  # croniter: seconds are the sixth field
    assert following_tick(every_5s, datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC)) == datetime(
        2026, 1, 1, 0, 0, 10, tzinfo=UTC)


@pytest.mark.parametrize(("catch_up", "expected"), [
    ("none", ["10:05"]), ("latest", ["10:04", "10:05"]),
    ("all", ["10:00", "10:01", "10:02", "10:03", "10:04", "10:05"]),
])
def test_missed_ticks_follow_catch_up(catch_up: str, expected: list[str]) -> None:
    schedule = Schedule("* * * * *", "UTC", catch_up)
    due = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 5, 30, tzinfo=UTC)  # down since before 10:00
    ticks, following = ticks_to_run(schedule, due, now)
    assert [t.strftime("%H:%M") for t in ticks] == expected
    assert following == datetime(2026, 1, 1, 10, 6, tzinfo=UTC)


@pytest.mark.parametrize(("options", "message"), [
    ({"cron": "every day"}, "not a valid cron expression"),
    ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"cron": "0 3 * * *", "catch_up": "some"}, "catch_up must be one of none, latest, all"),
    ({"timezone": "UTC"}, "timezone= and catch_up= go with cron="),
    ({}, "needs a trigger: event= or cron="),
])
def test_bad_schedules_are_refused_at_import(
    app: Durable, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.function(id="nightly", **options)(lambda ctx: None)


def test_catch_up_after_downtime(app: Durable, db: psycopg.Connection[Any]) -> None:
    for mode in ("none", "latest", "all"):
        @app.function(id=f"report-{mode}", cron="* * * * *", catch_up=mode)
        def report(ctx: Context) -> str:
            return str(ctx.event.data["tick"])

    # As if every worker had been down for five minutes and more.
    now = datetime.now(UTC)
    due = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    for mode in ("none", "latest", "all"):
        db.execute(f"INSERT INTO {app.schema}.schedules VALUES (%s, '* * * * *', 'UTC', %s)",
                   (f"report-{mode}", due))
    app.start(threads=2)
    wait_until(lambda: db.execute(
        f"SELECT bool_and(next_tick > now()) FROM {app.schema}.schedules").fetchone() == (True,),
        what="the schedules to move on")
    counts = {mode: len(wait_until(lambda m=mode: app.list_runs(function=f"report-{m}"),
                                   what=f"runs of {mode}")) for mode in ("none", "latest", "all")}
    assert counts == {"none": 1, "latest": 2, "all": 6}
    [latest_run, _] = app.list_runs(function="report-latest")
    assert app.wait_for_run(latest_run.id, 20).status == "completed"


def test_three_processes_start_one_run_per_tick(
    app: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app.function(id="every-second", cron="* * * * * *")(lambda ctx: None)
    workers = [worker_process(threads=2, PGDURABLE_TEST_CRON="1") for _ in range(3)]
    wait_until(lambda: len(app.list_runs(function="every-second", limit=100)) >= 5,
               timeout=60, what="five ticks")
    for worker in workers:
        worker.kill()
    rows = db.execute(
        f"SELECT e.ts, count(*) FROM {app.schema}.runs r JOIN {app.schema}.events e "
        "ON e.id = r.event_ids[1] WHERE r.function_id = 'every-second' GROUP BY e.ts ORDER BY e.ts"
    ).fetchall()
    ticks = [ts for ts, _ in rows]
    assert all(count == 1 for _, count in rows), rows
    # no tick skipped between the first and the last
    assert [(b - a).total_seconds() for a, b in pairwise(ticks)] == [1.0] * (len(ticks) - 1)


def test_cron_runs_carry_the_function_s_options(app: Durable) -> None:
    """Issue 22, s4's pattern: a run started by a cron tick listens for its
    cancel_on events like a sent event's run."""
    @app.function(id="ticking", cron="* * * * * *", cancel_on=[Cancel(event="stop")])
    def ticking(ctx: Context) -> None:
        ctx.step.sleep("nap", "1h")

    app.start(threads=2)
    [first, *_] = wait_until(lambda: app.list_runs(function="ticking", status="sleeping"),
                             what="a tick's run asleep")
    app.send("stop", {})
    assert app.wait_for_run(first.id, 20).status == "cancelled"
    assert first.event_ids[0].startswith("pgdurable:cron/ticking/")
