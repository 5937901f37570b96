"""W1 drain: N single-step runs queued, one worker process; runs completed per second.

    python bench/w1_drain.py [--runs 20000] [--threads 8] [--prefetch 200]
"""

from __future__ import annotations

import argparse

import psycopg
from common import DSN, describe, fresh_schema, wait_for

from pgdurable import Context, Durable, Event


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=200)
    args = parser.parse_args()

    with fresh_schema() as schema:
        app = Durable(DSN, schema=schema, pool_size=4)
        app.migrate()

        @app.function(id="one-step", event="bench/w1")
        def one_step(ctx: Context) -> int:
            return int(ctx.step.run("work", lambda: ctx.event.data["i"] + 1))

        for start in range(0, args.runs, 1000):
            app.send([Event("bench/w1", {"i": i}) for i in range(start, min(start + 1000, args.runs))])
        with psycopg.connect(DSN, autocommit=True) as conn:
            def done() -> bool:
                row = conn.execute(f"SELECT NOT EXISTS (SELECT FROM {schema}.queue)").fetchone()
                return bool(row and row[0])

            app.start(threads=args.threads, prefetch=args.prefetch)
            elapsed = wait_for(done, timeout=600, interval=0.05)
        app.stop()
    print(f"W1 drain: {args.runs} runs in {elapsed:.2f} s = {args.runs / elapsed:,.0f} runs/s "
          f"(threads={args.threads}, prefetch={args.prefetch}; {describe()})")


if __name__ == "__main__":
    main()
