"""W1 drain: N single-step runs queued, one worker process; runs completed per second.

    python bench/w1_drain.py [--runs 20000] [--threads 8] [--prefetch 1000] [--finished 1000000]
                             [--concurrency 50 --keys 100]

`--finished` loads that many finished runs first, to show that history
does not slow the hot path. `--concurrency N` limits the function to N
runs at once per key, over `--keys` keys: the cost of flow control.
"""

from __future__ import annotations

from common import bench_app, describe, drain, drain_arguments, telemetry

from pgdurable import Concurrency, Context


def main() -> None:
    args = drain_arguments(runs=20_000, threads=8, prefetch=1000)
    with bench_app(pool_size=4, **telemetry(args)) as (app, schema):
        limit = Concurrency(args.concurrency, key="data.k") if args.concurrency else None

        @app.function(id="one-step", event="bench/w1", concurrency=limit)
        def one_step(ctx: Context) -> int:
            return int(ctx.step.run("work", lambda: ctx.event.data["i"] + 1))

        elapsed = drain(app, schema, args, "bench/w1", "one-step")
    print(f"W1 drain: {args.runs} runs in {elapsed:.2f} s = {args.runs / elapsed:,.0f} runs/s "
          f"(threads={args.threads}, prefetch={args.prefetch}, finished runs loaded={args.finished:,}, "
          f"concurrency={args.concurrency or 'none'} over {args.keys} keys; "
          f"{'traced; ' if args.trace else ''}{'metrics; ' if args.metrics else ''}"
          f"{describe()})")


if __name__ == "__main__":
    main()
