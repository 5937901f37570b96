"""Async handlers share one event loop per worker, `async_runs` at a time,
beside the threads of `def` handlers (issue 21, section 2); `def` handlers
take turns, `threads` at a time, lending theirs while their journal commits
(issue 19)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_until

from pgdurable import AsyncContext, ConfigurationError, Context, Durable


class Meter:
    """How many runs are inside a section at once, at most, and on which loops."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.loops: set[int] = set()
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.loops.add(id(asyncio.get_running_loop()))
            self.threads.add(threading.get_ident())

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def test_many_async_runs_progress_at_once_on_one_loop(app: Durable) -> None:
    """30 runs, each waiting until all 30 have arrived: possible only if
    they run at once, with 2 threads."""
    meter, arrived = Meter(), asyncio.Event()

    @app.function(id="gather", event="go")
    async def gather(ctx: AsyncContext) -> int:
        meter.enter()
        if meter.now == 30:
            arrived.set()
        await asyncio.wait_for(arrived.wait(), 20)
        meter.leave()
        return await ctx.step.run("after", lambda: 1)

    app.start(threads=2, async_runs=30)
    runs = [run_of(app, "go") for _ in range(30)]
    assert [app.wait_for_run(r, 30).status for r in runs] == ["completed"] * 30
    assert meter.most == 30 and len(meter.loops) == 1 and len(meter.threads) == 1


def test_async_runs_bounds_the_async_runs_executing(app: Durable) -> None:
    meter = Meter()

    @app.function(id="slow", event="go")
    async def slow(ctx: AsyncContext) -> None:
        meter.enter()
        await asyncio.sleep(0.05)
        meter.leave()
        await ctx.step.run("a", asyncio.sleep, 0.02)

    app.start(threads=1, async_runs=3)
    runs = [run_of(app, "go") for _ in range(24)]
    assert {app.wait_for_run(r, 30).status for r in runs} == {"completed"}
    assert meter.most == 3, f"{meter.most} async runs executed at once, with async_runs=3"


def test_a_def_step_of_an_async_handler_does_not_block_the_loop(app: Durable) -> None:
    """One run's `def` step blocks until another async run (on the same
    loop) lets it go: that run must get to execute meanwhile."""
    release = threading.Event()

    def blocking() -> str:
        return "released" if release.wait(20) else "never released"

    @app.function(id="blocks", event="blocks")
    async def blocks(ctx: AsyncContext) -> str:
        return await ctx.step.run("wait", blocking)

    @app.function(id="releases", event="releases")
    async def releases(ctx: AsyncContext) -> None:
        await ctx.step.run("release", release.set)

    app.start(threads=2, async_runs=4)
    blocked = run_of(app, "blocks")
    wait_until(lambda: app.get_run(blocked).status == "running", what="the blocking run to start")
    assert app.wait_for_run(run_of(app, "releases"), 20).status == "completed"
    assert app.wait_for_run(blocked, 20).output == "released"


def test_step_functions_run_on_the_loop_if_async_and_in_threads_if_not(app: Durable) -> None:
    where: dict[str, Any] = {}

    async def on_loop() -> None:
        where["async def"] = threading.current_thread().name

    def in_thread() -> None:
        where["def"] = threading.current_thread().name

    @app.function(id="both", event="go")
    async def both(ctx: AsyncContext) -> None:
        await ctx.step.run("a", on_loop)
        await ctx.step.run("b", in_thread)
        await ctx.step.run("c", lambda: asyncio.sleep(0, "a coroutine, awaited on the loop"))

    app.start(threads=1)
    assert app.wait_for_run(run_of(app, "go"), 20).status == "completed"
    assert where == {"async def": "pgdurable-loop", "def": where["def"]}
    assert where["def"].startswith("pgdurable-async")
    assert app.get_steps(app.runs_for_event(app.list_events(name="go")[0].id)[0].id)[2].output \
        == "a coroutine, awaited on the loop"


def test_tasks_a_run_leaves_behind_are_cancelled_and_no_other_runs(app: Durable) -> None:
    """A run that returns while a task it made still runs: that task is
    cancelled when it ends; a task of a run still going is not."""
    cancelled: list[str] = []
    started = asyncio.Event()

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    @app.function(id="leaves", event="leaves")
    async def leaves(ctx: AsyncContext) -> None:
        asyncio.get_running_loop().create_task(forever("left behind"))
        await asyncio.wait_for(started.wait(), 20)

    @app.function(id="keeps", event="keeps")
    async def keeps(ctx: AsyncContext) -> str:
        task = asyncio.create_task(forever("kept"))
        started.set()
        await asyncio.sleep(0.3)
        alive = not task.done()
        task.cancel()
        return "alive" if alive else "cancelled early"

    app.start(threads=1, async_runs=4)
    left, kept = run_of(app, "leaves"), run_of(app, "keeps")
    assert app.wait_for_run(left, 20).status == "completed"
    assert app.wait_for_run(kept, 20).output == "alive"
    assert cancelled == ["left behind", "kept"]


def test_stopping_cancels_an_async_run_past_the_timeout_and_releases_it(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """Its handler sees CancelledError; the run is queued again with no
    attempt spent, and completes once a worker runs again."""
    hold = {"seconds": 3600.0}
    seen: list[str] = []

    @app.function(id="long", event="go", retries=0)
    async def long(ctx: AsyncContext) -> str:
        try:
            await ctx.step.run("wait", asyncio.sleep, hold["seconds"])
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "done"

    app.start(threads=1)
    run_id = run_of(app, "go")
    wait_until(lambda: app.get_run(run_id).status == "running", what="the run to start")
    begun = time.monotonic()
    app.stop(timeout=0.5)
    assert time.monotonic() - begun < 5 and seen == ["cancelled"]
    run = app.get_run(run_id)
    assert run.status == "queued" and run.attempt == 0 and run.error is None
    hold["seconds"] = 0
    app.start(threads=1)
    assert app.wait_for_run(run_id, 20).output == "done"


def test_def_and_async_def_functions_of_one_app_each_get_their_room(app: Durable) -> None:
    """Threads busy with `def` runs leave async runs free to start, and the other way round."""
    release = threading.Event()

    @app.function(id="sync", event="sync")
    def sync(ctx: Context) -> str:
        return "released" if release.wait(20) else "never released"

    @app.function(id="async", event="async")
    async def asynchronous(ctx: AsyncContext) -> None:
        await ctx.step.run("release", release.set)

    app.start(threads=1, async_runs=1)
    held = [run_of(app, "sync") for _ in range(3)]
    wait_until(lambda: app.get_run(held[0]).status == "running", what="a def run to hold the thread")
    assert app.wait_for_run(run_of(app, "async"), 20).status == "completed"
    assert [app.wait_for_run(r, 20).output for r in held] == ["released"] * 3


@pytest.mark.parametrize("bad", [0, -1, 10_001, 2.5, True])
def test_a_bad_async_runs_is_refused(app: Durable, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="async_runs"):
        app.start(async_runs=bad)
    app.start(threads=1)  # nothing was started by the refused call


def test_def_handlers_execute_threads_at_a_time_and_lend_their_turn_between_steps(
    app: Durable,
) -> None:
    """With threads=2, at most 2 steps execute at once; yet runs interleave
    (a run's step begins while another run is between two of its steps),
    because a run waiting for its journal lends its turn."""
    lock, executing, most = threading.Lock(), [0], [0]
    begun: list[tuple[str, int]] = []

    def work(run_id: str, n: int) -> int:
        with lock:
            executing[0] += 1
            most[0] = max(most[0], executing[0])
            begun.append((run_id, n))
        time.sleep(0.002)  # work that overlapping turns would run side by side
        with lock:
            executing[0] -= 1
        return n

    @app.function(id="three", event="go")
    def three(ctx: Context) -> int:
        return sum(ctx.step.run(f"s{n}", work, ctx.run_id, n) for n in range(3))

    app.start(threads=2)
    runs = [run_of(app, "go") for _ in range(20)]
    assert {app.wait_for_run(r, 30).status for r in runs} == {"completed"}
    assert most[0] == 2, f"{most[0]} steps executed at once with threads=2"
    ends = {run_id: max(i for i, (r, _) in enumerate(begun) if r == run_id) for run_id, _ in begun}
    starts = {run_id: min(i for i, (r, _) in enumerate(begun) if r == run_id) for run_id, _ in begun}
    under_way = max(sum(starts[r] <= i <= ends[r] for r in starts) for i in range(len(begun)))
    assert under_way > 2, "no run began while two others were between their steps"
