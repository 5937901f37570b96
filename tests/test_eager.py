"""Eager starts: a run sent by the process whose worker has an idle thread is
leased to that worker in the sending transaction and starts once it commits.

Such a run's `started_at` is its `created_at` (the same transaction's
now()); a run a worker claimed afterwards started later.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from pgdurable import AsyncContext, Concurrency, Context, Durable, Event
from pgdurable._lanes import EXECUTORS_PER_TURN


def started_eagerly(app: Durable, event_id: str) -> list[bool]:
    """For each run of the event, once all have started: whether it started eagerly."""
    def started() -> list[Any] | None:
        runs = app.runs_for_event(event_id)
        return runs if runs and all(r.started_at for r in runs) else None
    return [r.started_at == r.created_at for r in wait_until(started, what="the runs to start")]


def test_a_run_sent_beside_an_idle_worker_starts_in_the_sending_transaction(app: Durable) -> None:
    seen: list[dict[str, Any]] = []

    @app.function(id="hello", event="hello")
    def hello(ctx: Context) -> str:
        seen.append(dict(ctx.event.data))
        return ctx.step.run("greet", lambda: f"hi {ctx.event.data['name']}")

    app.start(threads=2, poll_interval=60)
    [event_id] = app.send("hello", {"name": "ada", "n": [1.5, None]})
    assert started_eagerly(app, event_id) == [True]
    [run] = app.runs_for_event(event_id)
    assert app.wait_for_run(run.id, 10).output == "hi ada"
    assert seen == [{"name": "ada", "n": [1.5, None]}]  # the data as stored


def test_an_async_run_starts_in_an_idle_slot_of_the_event_loop(app: Durable) -> None:
    @app.function(id="hello", event="hello")
    async def hello(ctx: AsyncContext) -> str:
        return await ctx.step.run("greet", lambda: f"hi {ctx.event.data['name']}")

    app.start(threads=1, async_runs=2, poll_interval=60)
    [event_id] = app.send("hello", {"name": "ada"})
    assert started_eagerly(app, event_id) == [True]
    assert app.wait_for_run(app.runs_for_event(event_id)[0].id, 10).output == "hi ada"


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_send_async_starts_runs_eagerly_too(app: Durable, kind: str) -> None:
    if kind == "def":
        app.function(id="hello", event="hello")(lambda ctx: f"hi {ctx.event.data['name']}")
    else:
        @app.function(id="hello", event="hello")
        async def hello(ctx: AsyncContext) -> str:
            return f"hi {ctx.event.data['name']}"

    app.start(threads=1, async_runs=1, poll_interval=60)

    async def send() -> str:
        [event_id] = await app.send_async("hello", {"name": "ada"})
        await app.aclose()
        return event_id

    event_id = asyncio.run(send())
    assert started_eagerly(app, event_id) == [True]
    assert app.wait_for_run(app.runs_for_event(event_id)[0].id, 10).output == "hi ada"


def test_only_idle_threads_are_taken_and_the_rest_is_claimed_as_usual(app: Durable) -> None:
    release = threading.Event()

    @app.function(id="hold", event="hold")
    def hold(ctx: Context) -> int:
        release.wait(30)
        return int(ctx.event.data["i"])

    app.start(threads=1, poll_interval=0.2)  # one turn: the first run holds it till released
    idle = EXECUTORS_PER_TURN  # executor threads, each to hold a run of its own
    ids = app.send([Event("hold", {"i": i}) for i in range(idle + 3)])
    release.set()
    runs = [app.wait_for_run(app.runs_for_event(i)[0].id, 20) for i in ids]
    assert [r.output for r in runs] == list(range(idle + 3))
    assert [r.started_at == r.created_at for r in runs] == [True] * idle + [False] * 3


@pytest.mark.parametrize("case", ["flow control", "future ts", "eager=False", "conn=",
                                  "other function"])
def test_runs_that_must_go_through_a_claim_are_not_started_eagerly(
    app: Durable, make_app: Any, dsn: str, case: str
) -> None:
    options: dict[str, Any] = {"concurrency": Concurrency(limit=5)} if case == "flow control" else {}
    app.function(id="f", event="e", **options)(lambda ctx: "done")
    app.start(threads=2, poll_interval=0.2, eager=case != "eager=False")
    if case == "other function":  # registered after start: this worker does not run it
        app.function(id="g", event="e2")(lambda ctx: "done")
        other = make_app()
        other.function(id="g", event="e2")(lambda ctx: "done")
        other.start(threads=1, poll_interval=0.2)
    if case == "conn=":
        with psycopg.connect(dsn) as conn:
            [event_id] = app.send("e", {}, conn=conn)
    elif case == "future ts":
        [event_id] = app.send("e", {}, ts=datetime.now(UTC) + timedelta(milliseconds=300))
    else:
        [event_id] = app.send("e2" if case == "other function" else "e", {})
    assert started_eagerly(app, event_id) == [False]


@pytest.mark.parametrize("sender", ["send", "send_async"])
def test_a_failed_send_gives_the_reserved_threads_back(
    app: Durable, db: psycopg.Connection[Any], sender: str
) -> None:
    app.function(id="f", event="e")(lambda ctx: "done")
    db.execute(f"""
        CREATE FUNCTION {app.schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON {app.schema}.runs
        FOR EACH ROW WHEN (NEW.function_id = 'f') EXECUTE FUNCTION {app.schema}.refuse()""")
    app.start(threads=1, poll_interval=60)
    with pytest.raises(psycopg.errors.RaiseException, match="refused by a trigger"):
        if sender == "send":
            app.send("e", {})
        else:
            asyncio.run(app.send_async("e", {}))
    db.execute(f"DROP TRIGGER refuse ON {app.schema}.runs")
    [event_id] = app.send("e", {})  # the one thread is free again
    assert started_eagerly(app, event_id) == [True]


def test_stop_releases_an_eagerly_started_run_it_could_not_finish(
    make_app: Any, app: Durable
) -> None:
    entered, release = threading.Event(), threading.Event()

    @app.function(id="slow", event="slow")
    def slow(ctx: Context) -> str:
        entered.set()
        release.wait(30)
        return "first"

    app.start(threads=1, poll_interval=60)
    [event_id] = app.send("slow", {})
    assert entered.wait(20)
    app.stop(timeout=0.2)  # the handler does not return in time: the run is released
    release.set()
    other = make_app()
    other.function(id="slow", event="slow")(lambda ctx: "second")
    other.start(threads=1, poll_interval=0.2)
    [run] = app.runs_for_event(event_id)
    assert other.wait_for_run(run.id, 20).output == "second"
