"""History that stays small (issue 15, s4): cycles of (drain N runs, prune).

    python bench/prune_cycles.py [--cycles 20] [--runs 1000000] [--partition-interval 1m]
                                 [--keep 30s] [--dedupe 30s] [--threads 8] [--prefetch 1000]

Days are too long for a benchmark, so history is partitioned by the minute
(`partition_interval`), completed runs are kept `--keep` and event ids
deduplicated `--dedupe`: each prune drops the partitions of the minutes
whose runs have (90 %) expired, deletes the other expired runs and the
events, and VACUUMs what it deleted from. Per cycle: W1 (runs/s of the drain), the
prune's seconds and counts, and the total size of the tables of history
(retention_status: all partitions, indexes and TOAST). Flat means: from
cycle 3 on, within 10% of their median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from common import DSN, bench_app, describe, send_in_batches, wait_for

from pgdurable import Context, Retention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--partition-interval", default="1m")
    parser.add_argument("--keep", default="30s")
    parser.add_argument("--dedupe", default="30s", help="the app's dedupe_window")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=1000)
    args = parser.parse_args()
    print(describe(), flush=True)
    rates, sizes = [], []
    with bench_app(pool_size=4, retention=Retention(completed=args.keep),
                   dedupe_window=args.dedupe, partition_interval=args.partition_interval,
                   prune_interval=None) as (app, s):
        @app.function(id="one-step", event="bench/w1")
        def one_step(ctx: Context) -> int:
            return int(ctx.step.run("work", lambda: ctx.event.data["i"] + 1))

        app.migrate()  # records the interval and makes this minute's partitions
        with psycopg.connect(DSN, autocommit=True) as conn:
            for cycle in range(1, args.cycles + 1):
                send_in_batches(app, "bench/w1", ({"i": i} for i in range(args.runs)))
                app.start(threads=args.threads, prefetch=args.prefetch)
                seconds = wait_for(lambda: _empty(conn, s), timeout=3600, interval=0.1)
                app.stop()
                started = time.perf_counter()
                removed = app.prune()
                pruned = time.perf_counter() - started
                size = _size(conn, s)
                rates.append(args.runs / seconds)
                sizes.append(size)
                print(f"cycle {cycle:2}: W1 {rates[-1]:8,.0f} runs/s; prune {pruned:5.1f} s, "
                      f"removed {removed}; history {size / 2**20:8.1f} MiB", flush=True)
    steady = slice(2, None)
    for name, values in (("W1", rates), ("history size", sizes)):
        median = statistics.median(values[steady])
        spread = max(abs(v - median) / median for v in values[steady])
        print(f"{name} from cycle 3 on: median {median:,.0f}, within {spread:.0%} of it")


def _empty(conn: psycopg.Connection[object], schema: str) -> bool:
    row = conn.execute(f"SELECT NOT EXISTS (SELECT FROM {schema}.queue)").fetchone()
    return bool(row and row[0])


def _size(conn: psycopg.Connection[object], schema: str) -> int:
    row = conn.execute(f"SELECT sum(bytes) FROM {schema}.retention_status").fetchone()
    return int(row[0]) if row and row[0] else 0


if __name__ == "__main__":
    main()
