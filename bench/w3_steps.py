"""W3: N runs of 5 steps each, one worker process; steps journaled per second.

    python bench/w3_steps.py [--runs 5000] [--threads 16] [--prefetch 1000]
"""

from __future__ import annotations

import argparse

import psycopg
from common import DSN, describe, fresh_schema, wait_for

from pgdurable import Context, Durable, Event

STEPS = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--prefetch", type=int, default=1000)
    args = parser.parse_args()

    with fresh_schema() as schema:
        app = Durable(DSN, schema=schema, pool_size=4)
        app.migrate()

        @app.function(id="five-steps", event="bench/w3")
        def five_steps(ctx: Context) -> int:
            total = 0
            for n in range(STEPS):
                total += ctx.step.run(f"step-{n}", lambda n=n: n)
            return total

        for start in range(0, args.runs, 1000):
            app.send([Event("bench/w3", {"i": i}) for i in range(start, min(start + 1000, args.runs))])
        with psycopg.connect(DSN, autocommit=True) as conn:
            def done() -> bool:
                row = conn.execute(f"SELECT NOT EXISTS (SELECT FROM {schema}.queue)").fetchone()
                return bool(row and row[0])

            app.start(threads=args.threads, prefetch=args.prefetch)
            elapsed = wait_for(done, timeout=600, interval=0.05)
            journaled = conn.execute(f"SELECT count(*) FROM {schema}.steps").fetchone()
        app.stop()
    steps = journaled[0] if journaled else 0
    assert steps == args.runs * STEPS, steps
    print(f"W3: {args.runs} runs x {STEPS} steps = {steps} steps in {elapsed:.2f} s = "
          f"{steps / elapsed:,.0f} steps/s ({args.runs / elapsed:,.0f} runs/s; threads={args.threads}, "
          f"prefetch={args.prefetch}; {describe()})")


if __name__ == "__main__":
    main()
