"""Parallel steps: overlap, journaling, replay, and parking among branches."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from conftest import run_of

from pgdurable import Context, Durable, StepError


def journal(db: psycopg.Connection[Any], schema: str, run_id: str) -> dict[str, str]:
    rows = db.execute(f"SELECT step_key, status FROM {schema}.steps WHERE run_id = %s", (run_id,))
    return dict(rows.fetchall())


def test_sync_branches_overlap_and_each_is_journaled(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    both_inside = threading.Barrier(3, timeout=20)  # passes only if the 3 steps overlap

    def meet(name: str) -> str:
        both_inside.wait()
        return name.upper()

    @app.function(id="fan", event="go")
    def fan(ctx: Context) -> list[str]:
        first = ctx.step.run("first", lambda: "first")
        results = ctx.step.parallel(
            [lambda name=name: ctx.step.run(name, meet, name) for name in ("a", "b", "c")])
        return [first, *results]

    app.start(threads=1)
    run_id = run_of(app, "go")
    done = app.wait_for_run(run_id, 30)
    assert (done.status, done.output) == ("completed", ["first", "A", "B", "C"])
    assert journal(db, app.schema, run_id) == dict.fromkeys(("first", "a", "b", "c"), "completed")


def test_async_gather_and_parallel_overlap(app: Durable) -> None:
    @app.function(id="gatherer", event="go")
    async def gatherer(ctx: Context) -> list[Any]:
        arrived: list[str] = []

        async def meet(name: str, peers: int) -> str:
            arrived.append(name)
            for _ in range(2000):  # a deadline, not a sleep: until all peers are inside
                if sum(1 for a in arrived if a[0] == name[0]) == peers:
                    return name
                await asyncio.sleep(0.01)
            raise TimeoutError(f"{name} ran alone")

        gathered = await asyncio.gather(
            ctx.step.run("g1", meet, "g1", 2), ctx.step.run("g2", meet, "g2", 2))
        paralleled = await ctx.step.parallel(
            (lambda: ctx.step.run("p1", meet, "p1", 2), lambda: ctx.step.run("p2", meet, "p2", 2)))
        return [*gathered, *paralleled]

    app.start(threads=1)
    done = app.wait_for_run(run_of(app, "go"), 30)
    assert (done.status, done.output) == ("completed", ["g1", "g2", "p1", "p2"])


def test_a_retry_reruns_only_the_failed_branches(app: Durable, db: psycopg.Connection[Any]) -> None:
    calls: Counter[str] = Counter()

    def step(name: str) -> str:
        calls[name] += 1
        if name != "ok" and calls[name] == 1:
            raise RuntimeError(f"{name} flaked")
        return name

    @app.function(id="flaky-fan", event="go", retries=2)
    def flaky_fan(ctx: Context) -> tuple[str, ...]:
        return tuple(ctx.step.parallel(
            [lambda name=name: ctx.step.run(name, step, name) for name in ("ok", "x", "y")]))

    app.start(threads=1)
    run_id = run_of(app, "go")
    done = app.wait_for_run(run_id, 30)
    assert (done.status, done.output) == ("completed", ["ok", "x", "y"])
    assert calls == {"ok": 1, "x": 2, "y": 2}
    attempts = dict(db.execute(
        f"SELECT step_key, attempts FROM {app.schema}.steps WHERE run_id = %s", (run_id,)))
    assert attempts == {"ok": 1, "x": 2, "y": 2}  # both failures were journaled at once


def test_a_step_id_shared_by_two_branches_is_an_error(app: Durable) -> None:
    @app.function(id="clash", event="go", retries=0)
    def clash(ctx: Context) -> Any:
        return ctx.step.parallel((lambda: ctx.step.run("same", int), lambda: ctx.step.run("same", int)))

    app.start(threads=1)
    done = app.wait_for_run(run_of(app, "go"), 30)
    assert done.status == "failed" and done.error is not None
    assert done.error.type == "ConfigurationError"
    assert "used by parallel branches 0 and 1" in done.error.message


def test_a_branch_that_sleeps_lets_the_others_finish_first(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    calls: Counter[str] = Counter()
    slow_started = threading.Event()

    def slow() -> str:
        calls["slow"] += 1
        slow_started.set()
        time.sleep(0.5)  # the work being measured, not a synchronisation
        return "slow"

    def nap() -> str:
        slow_started.wait(20)
        ctx_holder[0].step.sleep("nap", "1s")
        return "napped"

    ctx_holder: list[Context] = []

    @app.function(id="sleepy-fan", event="go")
    def sleepy_fan(ctx: Context) -> Any:
        ctx_holder[:] = [ctx]
        return ctx.step.parallel((lambda: ctx.step.run("slow", slow), nap))

    app.start(threads=1)
    run_id = run_of(app, "go")
    done = app.wait_for_run(run_id, 30)
    assert (done.status, done.output) == ("completed", ["slow", "napped"])
    assert calls["slow"] == 1  # journaled before the run slept, so not run again
    assert journal(db, app.schema, run_id) == {"slow": "completed", "nap": "completed"}


def test_parallel_invokes_each_start_a_child(app: Durable) -> None:
    @app.function(id="double", event="never")
    def double(ctx: Context) -> int:
        return 2 * int(ctx.event.data["n"])

    @app.function(id="fan-out", event="go")
    async def fan_out(ctx: Context) -> list[int]:
        return list(await asyncio.gather(
            *(ctx.step.invoke(f"double-{n}", function=double, data={"n": n}) for n in range(4))))

    app.start(threads=2)
    run_id = run_of(app, "go")
    done = app.wait_for_run(run_id, 60)
    assert (done.status, done.output) == ("completed", [0, 2, 4, 6])
    assert sorted(r.parent_run_id or "" for r in app.list_runs(function="double")) == [run_id] * 4


def test_parallel_rejects_what_is_not_a_list_of_callables(app: Durable) -> None:
    @app.function(id="bad-fan", event="go", retries=0)
    def bad_fan(ctx: Context) -> Any:
        return ctx.step.parallel([ctx.step.run("eager", int)])  # a value, not a callable

    app.start(threads=1)
    done = app.wait_for_run(run_of(app, "go"), 30)
    assert done.status == "failed" and done.error is not None
    assert done.error.type == "TypeError" and "tuple or list of callables" in done.error.message


def test_a_failed_branch_step_raises_step_error_after_the_others_end(app: Durable) -> None:
    finished: list[str] = []

    def fine() -> str:
        finished.append("fine")
        return "fine"

    @app.function(id="one-fails", event="go", retries=0)
    def one_fails(ctx: Context) -> str:
        try:
            ctx.step.parallel((lambda: ctx.step.run("fine", fine),
                               lambda: ctx.step.run("bad", lambda: 1 / 0)))
        except StepError as exc:
            return f"{exc.error_type} after {finished}"
        return "no error"

    app.start(threads=1)
    done = app.wait_for_run(run_of(app, "go"), 30)
    assert done.output == "ZeroDivisionError after ['fine']"
