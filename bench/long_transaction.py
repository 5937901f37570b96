"""A long transaction elsewhere in the database, under a steady load (issue 15, s3).

A REPEATABLE READ transaction holds a snapshot, so vacuum may remove no row
version deleted after it began: the dead tuples of the hot tables (queue,
waits, run_keys...) pile up, and every claim walks past them. This keeps a
worker busy (senders top the queue up to --backlog runs of two steps), then
holds such a transaction open for --hold seconds, and reports, per window:
runs finished per second, and the dead tuples of the hot tables.

    python bench/long_transaction.py [--hold 300] [--before 60] [--after 120] [--window 10]
                                     [--vacuum-every SECONDS]

With --vacuum-every, a thread VACUUMs the hot tables that often (what a
worker could do where autovacuum is off or lags); with --hold 0, it measures
the steady load alone.

Recovery: the seconds after the transaction ends until a window's throughput
is back to 90 % of the median before it.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import psycopg
from common import DSN, bench_app, describe

from pgdurable import Context, Event

HOT = ("queue", "waits", "steps", "results", "runs", "events")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", type=float, default=300)
    parser.add_argument("--before", type=float, default=60)
    parser.add_argument("--after", type=float, default=120)
    parser.add_argument("--window", type=float, default=10)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--vacuum-every", type=float, default=0)
    args = parser.parse_args()
    with bench_app() as (app, schema):
        handled = Counter()

        @app.function(id="steady", event="bench/steady")
        def steady(ctx: Context) -> int:
            ctx.step.run("a", lambda: 1)
            handled.add()
            return ctx.step.run("b", lambda: 2)

        stop = threading.Event()
        helpers = [threading.Thread(target=keep_busy, args=(app, handled, args.backlog, stop))]
        if args.vacuum_every:
            helpers.append(threading.Thread(target=vacuum, args=(schema, args.vacuum_every, stop)))
        for helper in helpers:
            helper.start()
        app.start(threads=args.threads, prefetch=4 * args.threads)
        try:
            report(schema, args, measure(schema, args))
        finally:
            stop.set()
            for helper in helpers:
                helper.join()


class Counter:
    """Runs handled so far, counted in the handler: the sender reads it
    instead of counting the queue, a scan that would itself slow down with
    the dead tuples this benchmark piles up."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def keep_busy(app: Any, handled: Counter, backlog: int, stop: threading.Event) -> None:
    """Keep about `backlog` runs sent and not yet handled, so the worker is never idle."""
    sent = 0
    while not stop.is_set():
        missing = backlog - (sent - handled.value)
        if missing > backlog // 4:
            app.send([Event("bench/steady", {}) for _ in range(missing)])
            sent += missing
        else:
            stop.wait(0.05)


def vacuum(schema: str, every: float, stop: threading.Event) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        while not stop.wait(every):
            for table in ("queue", "waits"):
                conn.execute(f"VACUUM {schema}.{table}")


def measure(schema: str, args: argparse.Namespace) -> list[tuple[str, float, float, dict[str, int]]]:
    """(phase, seconds since the start, runs/s, dead tuples by table) per window."""
    samples: list[tuple[str, float, float, dict[str, int]]] = []
    holder = psycopg.connect(DSN)
    with psycopg.connect(DSN, autocommit=True) as conn:
        started = time.monotonic()
        finished = count_finished(conn, schema)
        phases = [("warmup", args.window), ("before", args.before), ("held", args.hold),
                  ("after", args.after)]
        for phase, length in phases:
            if phase == "held":
                holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                holder.execute(f"SELECT count(*) FROM {schema}.events")  # takes the snapshot
            if phase == "after":
                holder.rollback()
            end = time.monotonic() + length
            while time.monotonic() < end:
                at = time.monotonic()
                time.sleep(args.window)
                now_finished = count_finished(conn, schema)
                rate = (now_finished - finished) / (time.monotonic() - at)
                finished = now_finished
                samples.append((phase, time.monotonic() - started, rate, dead_tuples(conn, schema)))
                print(f"{phase:>6} t={samples[-1][1]:6.0f}s {rate:8,.0f} runs/s  dead: "
                      + " ".join(f"{k}={v:,}" for k, v in samples[-1][3].items()), flush=True)
    holder.close()
    return samples


def count_finished(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {schema}.results").fetchone()
    return int(row[0]) if row else 0


def dead_tuples(conn: psycopg.Connection[Any], schema: str) -> dict[str, int]:
    rows = conn.execute("SELECT relname, n_dead_tup FROM pg_stat_user_tables "
                        "WHERE schemaname = %s AND relname = ANY(%s)", (schema, list(HOT)))
    return {name: int(dead) for name, dead in rows}


def report(schema: str, args: argparse.Namespace,
           samples: list[tuple[str, float, float, dict[str, int]]]) -> None:
    by_phase = {p: [rate for phase, _, rate, _ in samples if phase == p]
                for p in ("before", "held", "after")}
    base = statistics.median(by_phase["before"])
    if not by_phase["held"]:
        print(f"steady load, no long transaction: {base:,.0f} runs/s (median), first "
              f"{by_phase['before'][0]:,.0f}, last {by_phase['before'][-1]:,.0f}; vacuum every "
              f"{args.vacuum_every or 'never'} s ({describe()})")
        return
    held = statistics.median(by_phase["held"])
    recovered = next((f"within {(i + 1) * args.window:.0f} s" for i, rate
                      in enumerate(by_phase["after"]) if rate >= 0.9 * base),
                     f"not within {args.after:.0f} s")
    peak = max(sum(d.get(t, 0) for t in ("queue", "waits")) for *_, d in samples)
    print(f"long transaction held {args.hold:.0f} s: {base:,.0f} runs/s before (median), "
          f"{held:,.0f} while held ({held / base:.0%}), min {min(by_phase['held']):,.0f}; "
          f"back to 90 % {recovered} after it ended; peak dead tuples in "
          f"queue+waits {peak:,}; threads={args.threads} backlog={args.backlog} ({describe()})")


if __name__ == "__main__":
    main()
