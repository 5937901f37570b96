"""W4 sleeping runs: what parked runs cost the worker, and how late they wake.

    python bench/w4_sleep.py [--runs 100000] [--threads 8]

Sender and worker share one process. Phase "hold": every run sleeps 1 h;
once all are parked, the worker's memory, threads and CPU are sampled over
a quiet window, then the runs are cancelled in bulk. Phase "wake": every run
sleeps 1-10 s (uniform); lateness is the start of the step after the sleep
minus the wake-up time the sleep journaled.
"""

from __future__ import annotations

import argparse
import random
import threading
import time

import psycopg
from common import DSN, bench_app, describe, percentiles, rss_mib, send_in_batches, wait_for

from pgdurable import Context, Durable


def count(schema: str, where: str) -> int:
    with psycopg.connect(DSN) as conn:
        row = conn.execute(f"SELECT count(*) FROM {schema}.queue WHERE {where}").fetchone()
    return int(row[0]) if row else 0


def hold(app: Durable, schema: str, runs: int, window: float) -> None:
    before = rss_mib()
    started = time.perf_counter()
    send_in_batches(app, "bench/sleep", ({"seconds": 3600} for _ in range(runs)))
    wait_for(lambda: count(schema, "status = 'sleeping'") == runs, timeout=600, interval=0.2)
    parked = time.perf_counter() - started
    rss_parked, threads = rss_mib(), threading.active_count()
    cpu = time.process_time()
    time.sleep(window)  # the measurement: what the worker spends while they sleep
    idle_cpu = (time.process_time() - cpu) / window * 100
    cancel = time.perf_counter()
    cancelled = app.cancel_runs("sleeper")
    cancel_s = time.perf_counter() - cancel
    print(f"W4 hold: {runs} runs sent and parked in {parked:.1f} s; while they slept: "
          f"RSS {rss_parked:.0f} MiB "
          f"(before sending {before:.0f} MiB), {threads} threads, process CPU {idle_cpu:.1f} % "
          f"over {window:.0f} s; bulk cancel of {cancelled} runs in {cancel_s:.2f} s")


def wake(app: Durable, schema: str, runs: int) -> None:
    started = time.perf_counter()
    send_in_batches(app, "bench/sleep", ({"seconds": random.uniform(1, 10)} for _ in range(runs)))
    wait_for(lambda: count(schema, "true") == 0, timeout=600, interval=0.2)
    elapsed = time.perf_counter() - started
    with psycopg.connect(DSN) as conn:
        late = [row[0] * 1000 for row in conn.execute(
            f"SELECT extract(epoch FROM w.started_at - (n.output #>> '{{}}')::timestamptz) "
            f"FROM {schema}.steps n JOIN {schema}.steps w ON w.run_id = n.run_id "
            "WHERE n.step_key = 'nap' AND w.step_key = 'woke'")]
    p = percentiles(late)
    print(f"W4 wake: {len(late)} runs slept 1-10 s, all done {elapsed:.1f} s after the first send; "
          f"lateness p50 {p['p50']:.0f} ms, p95 {p['p95']:.0f} ms, p99 {p['p99']:.0f} ms, "
          f"max {p['max']:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    with bench_app() as (app, schema):

        @app.function(id="sleeper", event="bench/sleep")
        def sleeper(ctx: Context) -> None:
            ctx.step.sleep("nap", ctx.event.data["seconds"])
            ctx.step.run("woke", lambda: None)

        app.start(threads=args.threads, prefetch=1000)
        hold(app, schema, args.runs, args.window)
        wake(app, schema, args.runs)
        app.stop()
    print(f"({describe()}; threads={args.threads}, prefetch=1000)")


if __name__ == "__main__":
    main()
