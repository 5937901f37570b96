"""History that stays small (issue 15, s4): cycles of (drain N runs, prune).

    python bench/prune_cycles.py [--cycles 20] [--runs 1000000] [--partition-interval 1m]
                                 [--keep 30s] [--dedupe 30s] [--threads 8] [--prefetch 1000]

Days are too long for a benchmark, so history is partitioned by the minute
(`partition_interval`), completed runs are kept `--keep` and event ids
deduplicated `--dedupe`: a cycle stands for a day. Each cycle begins at a
partition's start (by the database's clock), so that its runs fill that
partition alone (a cycle must fit in one), sends and drains N one-step
runs, then prunes as of `--keep` after the cycle began: the runs of the
cycles before have all expired, this cycle's none, so the partitions before
are dropped whole and the events deleted. Per cycle: W1 (runs/s of the
drain), the prune's seconds and counts, the size of the tables of history
(retention_status: all partitions, indexes and TOAST) and of all the
schema's tables (the queue too). Flat means: from cycle 3 on, within 10% of
their median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime
from typing import Any

import psycopg
from common import DSN, bench_app, describe, send_in_batches, wait_for

from pgdurable import Context, Retention
from pgdurable._durations import parse_duration


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
    rates: list[float] = []
    sizes: list[int] = []
    totals: list[int] = []
    with bench_app(pool_size=4, retention=Retention(completed=args.keep),
                   dedupe_window=args.dedupe, partition_interval=args.partition_interval,
                   prune_interval=None) as (app, s):
        @app.function(id="one-step", event="bench/w1")
        def one_step(ctx: Context) -> int:
            return int(ctx.step.run("work", lambda: ctx.event.data["i"] + 1))

        app.migrate()  # records the interval and makes this minute's partitions
        with psycopg.connect(DSN, autocommit=True) as conn:
            for cycle in range(1, args.cycles + 1):
                began = _next_partition(conn, args.partition_interval)
                send_in_batches(app, "bench/w1", ({"i": i} for i in range(args.runs)))
                app.start(threads=args.threads, prefetch=args.prefetch)
                seconds = wait_for(lambda: _empty(conn, s), timeout=3600, interval=0.1)
                app.stop()
                if _now(conn) >= began + parse_duration(args.partition_interval):
                    print("this cycle did not fit in its partition: use fewer runs or a "
                          "longer --partition-interval", flush=True)
                started = time.perf_counter()
                removed = app.prune(as_of=began + parse_duration(args.keep))
                pruned = time.perf_counter() - started
                rates.append(args.runs / seconds)
                sizes.append(_size(conn, s, "retention_status"))
                totals.append(_size(conn, s, "every table"))
                print(f"cycle {cycle:2}: W1 {rates[-1]:8,.0f} runs/s; prune {pruned:5.1f} s, "
                      f"removed {removed}; history {sizes[-1] / 2**20:8.1f} MiB, all tables "
                      f"{totals[-1] / 2**20:8.1f} MiB", flush=True)
    steady = slice(2, None)
    for name, values in (("W1", rates), ("history size", sizes), ("size of all tables", totals)):
        median = statistics.median(values[steady])
        spread = max(abs(v - median) / median for v in values[steady])
        print(f"{name} from cycle 3 on: median {median:,.0f}, within {spread:.0%} of it")


def _empty(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(f"SELECT NOT EXISTS (SELECT FROM {schema}.queue)").fetchone()
    return bool(row and row[0])


def _size(conn: psycopg.Connection[Any], schema: str, what: str) -> int:
    """Bytes of the tables of history (retention_status), or of every table
    of the schema, with their indexes and TOAST."""
    query = (f"SELECT sum(bytes) FROM {schema}.retention_status" if what == "retention_status"
             else "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                  f"WHERE c.relnamespace = '{schema}'::regnamespace AND c.relkind = 'r'")
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] else 0


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


def _next_partition(conn: psycopg.Connection[Any], interval: str) -> datetime:
    """Wait for the start of the next partition (the database's clock); return it."""
    width = parse_duration(interval)
    row = conn.execute("SELECT date_bin(%s, now(), timestamptz 'epoch') + %s", (width, width)).fetchone()
    assert row is not None
    start: datetime = row[0]
    time.sleep(max(0.0, (start - _now(conn)).total_seconds()))
    return start


if __name__ == "__main__":
    main()
