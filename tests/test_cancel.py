"""A cancel that returned True is kept, however the run moves next (issue 22, section 1)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg
import pytest
from conftest import run_of, status_of, wait_until

from pgdurable import AsyncContext, Context, Durable, RetryAfterError, Run


def gap(reached: threading.Event, release: threading.Event) -> None:
    """Plain handler code between two steps, held until the test lets it go."""
    reached.set()
    assert release.wait(30)


def cancel_in_gap(app: Durable, reached: threading.Event, release: threading.Event) -> Run:
    """Start a run of "go", cancel it while it is in its gap, let it go on;
    the run once it has ended."""
    app.start(threads=2)
    run_id = run_of(app, "go")
    assert reached.wait(20)
    assert app.cancel(run_id) is True
    release.set()
    return app.wait_for_run(run_id, 20)


@pytest.mark.parametrize("park", ["wait", "sleep", "retry-after", "invoke"])
def test_a_cancel_between_a_step_and_a_park_ends_the_run(app: Durable, park: str) -> None:
    reached, release = threading.Event(), threading.Event()

    @app.function(id="child", event="never")
    def child(ctx: Context) -> str:
        return "child ran"

    @app.function(id="parker", event="go", retries=3)
    def parker(ctx: Context) -> None:
        ctx.step.run("a", lambda: "a")
        gap(reached, release)
        if park == "wait":
            ctx.step.wait_for_event("reply", event="reply")
        elif park == "sleep":
            ctx.step.sleep("nap", "1h")
        elif park == "invoke":
            ctx.step.invoke("call", function="child")
        else:
            ctx.step.run("later", lambda: (_ for _ in ()).throw(RetryAfterError("later", "1h")))

    run = cancel_in_gap(app, reached, release)
    assert run.status == "cancelled", f"the run is {run.status}, not cancelled"
    assert app.list_runs(function="child") == [], "no child starts after the cancel"


@pytest.mark.parametrize("where", ["between-steps", "before-the-only-step", "after-the-last-step"])
def test_no_step_starts_after_the_boundary_that_follows_a_cancel(app: Durable, where: str) -> None:
    reached, release = threading.Event(), threading.Event()
    executed: Counter[str] = Counter()

    @app.function(id="stepper", event="go")
    def stepper(ctx: Context) -> str:
        if where == "before-the-only-step":
            gap(reached, release)
            ctx.step.run("only", lambda: executed.update(["only"]))
            return "done"
        ctx.step.run("a", lambda: executed.update(["a"]))
        gap(reached, release)
        if where == "between-steps":
            ctx.step.run("b", lambda: executed.update(["b"]))
        return "done"

    run = cancel_in_gap(app, reached, release)
    assert run.status == "cancelled" and run.output is None
    assert executed["b"] == 0 and executed["only"] == 0, f"steps executed: {dict(executed)}"


def test_a_def_step_that_waited_for_a_thread_does_not_start_after_a_cancel(app: Durable) -> None:
    """In an async handler a `def` step runs in a thread, maybe after waiting
    for one: it must still not start once a cancel has returned."""
    reached, release = threading.Event(), threading.Event()
    executed: list[str] = []

    @app.function(id="holder", event="hold")
    async def holder(ctx: AsyncContext) -> None:
        await ctx.step.run("hold", release.wait, 20)  # the only thread, until released

    async def reach() -> None:
        reached.set()

    @app.function(id="queued", event="go")
    async def queued(ctx: AsyncContext) -> None:
        await ctx.step.run("a", reach)
        await ctx.step.run("b", executed.append, "b")  # waits for the thread

    app.start(threads=1)
    held = run_of(app, "hold")
    wait_until(lambda: app.get_run(held).status == "running", what="the thread to be held")
    run_id = run_of(app, "go")
    assert reached.wait(20)
    assert app.cancel(run_id) is True
    release.set()
    assert app.wait_for_run(run_id, 20).status == "cancelled"
    assert executed == [], "step b started after the cancel returned"
    assert app.wait_for_run(held, 20).status == "completed"


def test_runs_cancelled_as_soon_as_they_are_seen_running_all_end_cancelled(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """The probe of section 1, short: each run is cancelled the moment a
    poller sees it running, whatever it is doing then (a step, the code
    between steps, or getting to its wait)."""
    @app.function(id="waiter", event="go")
    def waiter(ctx: Context) -> None:
        ctx.step.run("a", lambda: None)
        ctx.step.run("b", lambda: None)
        ctx.step.wait_for_event("never", event="never")

    app.start(threads=4)
    runs = [run_of(app, "go") for _ in range(60)]
    pending = set(runs)

    def cancel_running() -> bool:
        for run_id in list(pending):
            if status_of(app, run_id) in ("running", "waiting") and app.cancel(run_id):
                pending.discard(run_id)
        return not pending

    wait_until(cancel_running, timeout=60, what="every run to be seen and cancelled")
    wait_until(lambda: db.execute(f"SELECT count(*) FROM {app.schema}.queue").fetchone() == (0,),
               timeout=30, what="every cancelled run to end")
    statuses = Counter(status_of(app, run_id) for run_id in runs)
    assert statuses == {"cancelled": 60}
    assert db.execute(f"SELECT count(*) FROM {app.schema}.waits").fetchone() == (0,)
