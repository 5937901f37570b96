"""W3: N runs of 5 steps each, one worker process; steps journaled per second.

    python bench/w3_steps.py [--runs 5000] [--threads 64] [--prefetch 1000] [--asyncio-sleep S]

With `--asyncio-sleep S`, the handler is `async def` and each step awaits
`asyncio.sleep(S)`: I/O-bound async work, as the seeds' LLM and OCR calls are.
"""

from __future__ import annotations

import asyncio

import psycopg
from common import DSN, bench_app, describe, drain, drain_arguments, telemetry

from pgdurable import AsyncContext, Context

STEPS = 5


def main() -> None:
    args = drain_arguments(runs=5000, threads=64, prefetch=1000)
    pause = args.asyncio_sleep
    with bench_app(pool_size=4, **telemetry(args)) as (app, schema):
        if pause is None:
            def value(n: int) -> int:
                return n

            @app.function(id="five-steps", event="bench/w3")
            def five_steps(ctx: Context) -> int:
                return sum(ctx.step.run(f"step-{n}", value, n) for n in range(STEPS))
        else:
            async def io(n: int) -> int:
                await asyncio.sleep(pause)
                return n

            @app.function(id="five-steps", event="bench/w3")
            async def five_steps_async(ctx: AsyncContext) -> int:
                return sum([await ctx.step.run(f"step-{n}", io, n) for n in range(STEPS)])

        elapsed = drain(app, schema, args, "bench/w3", "five-steps")
        with psycopg.connect(DSN) as conn:
            row = conn.execute(f"SELECT count(*) FROM {schema}.steps WHERE run_id IN "
                               f"(SELECT id FROM {schema}.runs WHERE function_id = 'five-steps')").fetchone()
    steps = row[0] if row else 0
    assert steps == args.runs * STEPS + args.finished, steps
    steps -= args.finished
    print(f"W3: {args.runs} runs x {STEPS} steps = {steps} steps in {elapsed:.2f} s = "
          f"{steps / elapsed:,.0f} steps/s ({args.runs / elapsed:,.0f} runs/s; threads={args.threads}, "
          f"prefetch={args.prefetch}; "
          f"{f'async steps awaiting asyncio.sleep({pause}); ' if pause is not None else ''}"
          f"{'traced; ' if args.trace else ''}{'metrics; ' if args.metrics else ''}"
          f"{describe()})")


if __name__ == "__main__":
    main()
