"""W5 waiting runs woken by events: wake-ups per second.

    python bench/w5_wake.py [--runs 10000] [--threads 8]

Every run waits for an event matching its own `data.n`; once all wait,
the matching events are sent in batches of 1,000 (one round trip each).
Reported: how fast the sends woke the waiting steps (their journal entries
completed by the senders' transactions), and how fast the woken runs then
finished on the worker.
"""

from __future__ import annotations

import argparse
import time

import psycopg
from common import DSN, bench_app, describe, send_in_batches, wait_for

from pgdurable import Context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with bench_app() as (app, schema), psycopg.connect(DSN, autocommit=True) as db:

        @app.function(id="waiter", event="bench/wait")
        def waiter(ctx: Context) -> None:
            ctx.step.wait_for_event("go", event="bench/go", match="data.n", timeout="1h")

        def queued(where: str) -> int:
            row = db.execute(f"SELECT count(*) FROM {schema}.queue WHERE {where}").fetchone()
            return int(row[0]) if row else 0

        app.start(threads=args.threads, prefetch=1000)
        send_in_batches(app, "bench/wait", ({"n": n} for n in range(args.runs)))
        wait_for(lambda: queued("status = 'waiting'") == args.runs, timeout=600, interval=0.1)

        started = time.perf_counter()
        send_in_batches(app, "bench/go", ({"n": n} for n in range(args.runs)))
        sent = time.perf_counter() - started
        wait_for(lambda: queued("true") == 0, timeout=600, interval=0.02)
        done = time.perf_counter() - started
        app.stop()
    print(f"W5: {args.runs} waiting runs woken by {args.runs} matching events: sends (which wake "
          f"the steps) {sent:.2f} s = {args.runs / sent:,.0f} wake-ups/s; all runs finished after "
          f"{done:.2f} s = {args.runs / done:,.0f} runs/s ({describe()}; threads={args.threads})")


if __name__ == "__main__":
    main()
