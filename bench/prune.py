"""History and pruning (issue 15, s4): W1 beside 10 million finished runs, and
W1 while they are pruned.

    python bench/prune.py [--history 10000000] [--runs 20000] [--rounds 3]
                          [--threads 8] [--prefetch 1000]

1. W1 (one-step runs drained by one worker) on an empty schema and on one
   holding --history finished runs (events, runs, results, one journal
   entry each, made over 10 days that ended 10 days ago, in the daily
   partitions of those days), alternately, --rounds times: the medians
   side by side.
2. Then a worker of another app on the schema prunes that history in the
   background (default retention: all of it has expired) while W1 drains
   go on: the prune's wall time and counts, and W1 while it runs against
   W1 just before and just after (--rounds drains each), on the same
   schema: the machine's speed drifts, so both sides are counted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from common import DSN, bench_app, describe, send_in_batches, wait_for

from pgdurable import Context, Durable

# History as a busy app leaves it: --history finished runs created over 10
# days, ending 10 days ago (so that all have expired under the default
# retention), each with its event, result and one journal entry, in the
# daily partitions of those days.
MOMENT = "(%(start)s::timestamptz + g * interval '10 days' / %(n)s)"
RUN_ID = ("(left({s}.uuid_at(" + MOMENT + ")::text, 24) || lpad(to_hex(g), 12, '0'))::uuid")
HISTORY = [
    "INSERT INTO {s}.events (id, name, data, ts, received_at) SELECT 'old-' || g, 'bench/w1', "
    "jsonb_build_object('i', g), " + MOMENT + ", " + MOMENT +
    " FROM generate_series(%(lo)s::bigint, %(hi)s) g",
    "INSERT INTO {s}.runs (id, function_id, event_ids, created_at) SELECT " + RUN_ID +
    ", 'one-step', ARRAY['old-' || g], " + MOMENT + " FROM generate_series(%(lo)s::bigint, %(hi)s) g",
    "INSERT INTO {s}.results (run_id, status, output, attempt, started_at, finished_at) SELECT "
    + RUN_ID + ", 'completed', to_jsonb(g), 0, " + MOMENT + ", " + MOMENT +
    " + interval '1 second' FROM generate_series(%(lo)s::bigint, %(hi)s) g",
    "INSERT INTO {s}.steps (run_id, step_key, position, status, output, started_at, finished_at) "
    "SELECT " + RUN_ID + ", 'work', 1, 'completed', to_jsonb(g), " + MOMENT + ", " + MOMENT +
    " FROM generate_series(%(lo)s::bigint, %(hi)s) g",
]
# The days of history get their partitions as a worker up all along would
# have made them: from a first partition ending 21 days ago (its tables are
# never made; its row only tells add_partitions where to start).
PAST_PARTITIONS = [
    "SELECT {s}.drop_partition(suffix, now()) FROM {s}.history_partitions",
    "INSERT INTO {s}.history_partitions (suffix, upper_id) VALUES "
    "('start', {s}.uuid_at(date_trunc('day', now() - interval '21 days')))",
    "SELECT {s}.add_partitions(1)",
    "DELETE FROM {s}.history_partitions WHERE suffix = 'start'",
]
CHUNK = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=1000)
    args = parser.parse_args()
    print(describe(), flush=True)
    with w1_app() as (empty, empty_schema), w1_app() as (loaded, loaded_schema):
        started = time.perf_counter()
        load_history(loaded_schema, args.history)
        print(f"loaded {args.history:,} finished runs in {time.perf_counter() - started:.0f} s; "
              f"history is {relation_bytes(loaded_schema) / 2**30:.2f} GiB", flush=True)
        rates: dict[str, list[float]] = {"empty": [], "loaded": []}
        for _ in range(args.rounds):
            for name, (app, schema) in (("empty", (empty, empty_schema)),
                                        ("loaded", (loaded, loaded_schema))):
                rates[name].append(drain(app, schema, args))
                print(f"  W1 {name}: {rates[name][-1]:,.0f} runs/s", flush=True)
        empty_w1, loaded_w1 = (statistics.median(rates[k]) for k in ("empty", "loaded"))
        print(f"W1 with {args.history:,} finished runs: {loaded_w1:,.0f} runs/s, "
              f"{loaded_w1 / empty_w1:.0%} of W1 on empty tables ({empty_w1:,.0f} runs/s); "
              f"medians of {args.rounds}", flush=True)
        prune_under_load(loaded, loaded_schema, args)


@contextmanager
def w1_app() -> Iterator[tuple[Durable, str]]:
    with bench_app(pool_size=4, prune_interval=None) as (app, schema):  # the pruner is apart
        @app.function(id="one-step", event="bench/w1")
        def one_step(ctx: Context) -> int:
            return int(ctx.step.run("work", lambda: ctx.event.data["i"] + 1))

        yield app, schema


def load_history(schema: str, count: int) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        for statement in PAST_PARTITIONS:
            conn.execute(statement.format(s=schema).encode())
        start = conn.execute("SELECT now() - interval '20 days'").fetchone()[0]  # type: ignore[index]
        for statement in HISTORY:
            for lo in range(1, count + 1, CHUNK):
                conn.execute(statement.format(s=schema).encode(),
                             {"lo": lo, "hi": min(lo + CHUNK - 1, count), "n": count,
                              "start": start})
        conn.execute(f"VACUUM ANALYZE {schema}.events, {schema}.runs, {schema}.results, "
                     f"{schema}.steps".encode())
        conn.execute("CHECKPOINT")  # measure the drains, not the flush of the load


def relation_bytes(schema: str) -> int:
    with psycopg.connect(DSN) as conn:
        row = conn.execute(f"SELECT sum(bytes) FROM {schema}.retention_status").fetchone()
    return int(row[0]) if row and row[0] else 0


def drain(app: Durable, schema: str, args: argparse.Namespace) -> float:
    """Queue --runs runs, start the worker, and return runs/s until the queue is empty."""
    send_in_batches(app, "bench/w1", ({"i": i} for i in range(args.runs)))
    with psycopg.connect(DSN, autocommit=True) as conn:
        def done() -> bool:
            row = conn.execute(f"SELECT NOT EXISTS (SELECT FROM {schema}.queue)").fetchone()
            return bool(row and row[0])

        app.start(threads=args.threads, prefetch=args.prefetch)
        try:
            return args.runs / wait_for(done, timeout=600, interval=0.05)
        finally:
            app.stop()


def prune_under_load(app: Durable, schema: str, args: argparse.Namespace) -> None:
    """W1 drains before, and while a worker of another app on the schema
    prunes in the background (as workers do, every prune_interval)."""
    before = [drain(app, schema, args) for _ in range(args.rounds)]
    pruner = Durable(DSN, schema=schema, prune_interval="1h")  # prunes at once, then hourly
    pruner.start(threads=1)
    during = []
    try:
        while (pruned := last_prune(schema)) is None:
            during.append(drain(app, schema, args))
    finally:
        pruner.stop()
    seconds, removed = pruned
    print(f"background prune of {args.history:,} expired runs: {seconds:.1f} s, removed "
          f"{removed}; history now {relation_bytes(schema) / 2**30:.2f} GiB", flush=True)
    after = [drain(app, schema, args) for _ in range(args.rounds)]
    if during:
        around = statistics.median(before + after)
        print(f"W1 while pruning: {statistics.median(during):,.0f} runs/s (median of "
              f"{len(during)} drains), {statistics.median(during) / around:.0%} of W1 just "
              f"before and after ({around:,.0f} runs/s: before {statistics.median(before):,.0f}, "
              f"after {statistics.median(after):,.0f})", flush=True)


def last_prune(schema: str) -> tuple[float, dict[str, int]] | None:
    """The seconds the last prune took, and what it removed; None before the first."""
    with psycopg.connect(DSN) as conn:
        row = conn.execute(f"SELECT extract(epoch FROM finished_at - started_at), removed "
                           f"FROM {schema}.prune_log ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (float(row[0]), row[1])


if __name__ == "__main__":
    main()
