"""What an event trigger costs a bulk insert: N rows in one INSERT into a
table without a trigger, with one whose event no function handles (events
only), and with one whose event starts a run of a recorded function.

    python bench/trigger_cost.py [--rows 100000] [--rounds 3]

Each round runs the three cases in turn on a fresh table; each insert is its
own transaction (the trigger sends in it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from common import DSN, bench_app, describe

from pgdurable import Context, Durable

CASES = ("no trigger", "trigger, no function", "trigger, one run per row")


def insert(app: Durable, schema: str, case: str, rows: int) -> float:
    """Seconds for one INSERT of `rows` rows, in the setup `case` names."""
    table = f"{schema}.orders"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, customer text, total numeric)")
        if case != "no trigger":
            event = "order/created" if case.endswith("row") else "order/unhandled"
            app.create_event_trigger(table, event)
        conn.execute("CHECKPOINT")
        began = time.perf_counter()
        conn.execute(f"INSERT INTO {table} SELECT g, 'customer-' || g %% 1000, g / 100.0 "
                     f"FROM generate_series(1, %s) g", (rows,))
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with bench_app() as (app, schema):
        @app.function(id="on-order", event="order/created")
        def on_order(ctx: Context) -> None: ...

        app.start(threads=1)  # records the function for sends from SQL
        app.stop()
        times: dict[str, list[float]] = {case: [] for case in CASES}
        for _ in range(args.rounds):
            for case in CASES:
                times[case].append(insert(app, schema, case, args.rows))
    base = statistics.median(times["no trigger"])
    for case in CASES:
        median = statistics.median(times[case])
        print(f"{case}: {', '.join(f'{t:.2f}' for t in times[case])} s for {args.rows:,} rows; "
              f"median {1e6 * median / args.rows:.1f} us per row, "
              f"{1e6 * (median - base) / args.rows:+.1f} us over no trigger")
    print(describe())


if __name__ == "__main__":
    main()
