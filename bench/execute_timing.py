"""How long `pgdurable.testing.execute` takes to run a function to its end
when the function waits for days: a 1-day sleep, a wait that times out
after 7 days, a step retried once (backoff from 1 s), and an invoke whose
child sleeps an hour (the parent's timeout: a day).

    python bench/execute_timing.py [--rounds 10]

The app's worker is started by a first, unmeasured call.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import bench_app, describe

from pgdurable import Context, Durable
from pgdurable.testing import execute


def register(app: Durable) -> None:
    failures: dict[str, int] = {}

    @app.function(id="sleeper", event="sleeper")
    def sleeper(ctx: Context) -> int:
        ctx.step.sleep("day", "1d")
        return int(ctx.step.run("after", lambda: 1))

    @app.function(id="waiter", event="waiter")
    def waiter(ctx: Context) -> bool:
        return ctx.step.wait_for_event("approval", event="approved", timeout="7d") is None

    @app.function(id="retried", event="retried", retries=3)
    def retried(ctx: Context) -> int:
        def call() -> int:
            failures[ctx.run_id] = failures.get(ctx.run_id, 0) + 1
            if failures[ctx.run_id] == 1:
                raise ConnectionError("503")
            return 1

        return int(ctx.step.run("call", call))

    @app.function(id="child", event="child")
    def child(ctx: Context) -> int:
        ctx.step.sleep("think", "1h")
        return 2

    @app.function(id="parent", event="parent")
    def parent(ctx: Context) -> int:
        return int(ctx.step.invoke("score", function=child, timeout="1d"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with bench_app() as (app, _):
        register(app)
        execute(app, "sleeper")  # starts the worker
        for function_id in ("sleeper", "waiter", "retried", "parent"):
            times = []
            for _ in range(args.rounds):
                began = time.perf_counter()
                run = execute(app, function_id)
                times.append(time.perf_counter() - began)
                assert run.status == "completed", run
            print(f"{function_id}: median {1e3 * statistics.median(times):.0f} ms, "
                  f"max {1e3 * max(times):.0f} ms over {args.rounds}")
    print(describe())


if __name__ == "__main__":
    main()
