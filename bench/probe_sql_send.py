"""Probe: sends from SQL and event triggers under concurrent writers.

    python bench/probe_sql_send.py [--runs 2000] [--workers 4] [--seed 1]

`--workers` processes each make `--runs` / `--workers` moves at random,
each in a transaction of its own, over 100 event ids and 10 keys:

- `SELECT send('order/created', {"order": n}, id => 'o-<id>')`: ids sent
  by several processes at once (duplicates must start nothing);
- an INSERT of 1-3 rows into a table whose insert trigger sends
  `order/row`, committed or rolled back at random.

Two functions handle `order/created`: `plain`, and `once` (idempotency on
`data.order`); `on-row` handles `order/row`. Then, by SQL: each id is one
event, with one `plain` run; `once` ran once per key; each committed row,
and no rolled-back one, is an `order/row` event with one `on-row` run.
"""

from __future__ import annotations

import argparse
import json
import random
from multiprocessing import get_context
from typing import Any

import psycopg
from common import DSN, bench_app, describe

from pgdurable import Context, Durable

IDS, KEYS = 100, 10


def setup(app: Durable) -> str:
    """The functions (recorded by a worker's start) and the table with its
    trigger; returns the table."""
    for fid, options in (("plain", {}), ("once", {"idempotency": "data.order"})):
        app.function(id=fid, event="order/created", **options)(lambda ctx: None)

    @app.function(id="on-row", event="order/row")
    def on_row(ctx: Context) -> None: ...

    app.start(threads=1)
    app.stop()
    table = f"{app.schema}.orders"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, mover int, n int)")
    app.create_event_trigger(table, "order/row")
    return table


def move(args: tuple[str, str, int, int, int]) -> list[int]:
    """One writer's moves; returns how many rows it committed, by mover."""
    dsn, schema, mover, moves, seed = args
    rng, committed = random.Random(seed * 1000 + mover), 0
    with psycopg.connect(dsn) as conn:
        for _ in range(moves):
            if rng.random() < 0.5:
                n = rng.randrange(IDS)
                conn.execute(f"SELECT {schema}.send('order/created', %s::jsonb, id => %s)",
                             (json.dumps({"order": n % KEYS}), f"o-{n}"))
                conn.commit()
                continue
            rows = rng.randint(1, 3)
            conn.execute(f"INSERT INTO {schema}.orders (mover, n) "
                         f"SELECT %s, g FROM generate_series(1, %s) g", (mover, rows))
            if rng.random() < 0.3:
                conn.rollback()
            else:
                conn.commit()
                committed += rows
    return [committed]


def violations(schema: str, committed: int) -> dict[str, Any]:
    """What breaks the invariants, by SQL (all empty or equal when none does)."""
    with psycopg.connect(DSN) as conn:
        def one(query: str) -> Any:
            row = conn.execute(query.format(s=schema)).fetchone()
            return None if row is None else row[0]

        return {
            "ids whose event is not one with one plain run": one(
                "SELECT count(*) FROM {s}.events e WHERE e.name = 'order/created' AND "
                "(SELECT count(*) FROM {s}.runs r WHERE r.event_ids[1] = e.id "
                " AND r.function_id = 'plain') <> 1"),
            "keys whose once runs are not one": one(
                "SELECT count(*) FROM (SELECT e.data ->> 'order' FROM {s}.events e "
                "LEFT JOIN {s}.runs r ON r.event_ids[1] = e.id AND r.function_id = 'once' "
                "WHERE e.name = 'order/created' GROUP BY 1 HAVING count(r.id) <> 1) x"),
            "row events, committed rows": (one(
                "SELECT count(*) FROM {s}.events WHERE name = 'order/row'"), committed),
            "row events without one on-row run": one(
                "SELECT count(*) FROM {s}.events e WHERE e.name = 'order/row' AND "
                "(SELECT count(*) FROM {s}.runs r WHERE r.event_ids[1] = e.id) <> 1"),
            "row events of rows that are not in the table": one(
                "SELECT count(*) FROM {s}.events e WHERE e.name = 'order/row' AND NOT EXISTS "
                "(SELECT FROM {s}.orders o WHERE o.id = (e.data -> 'new' ->> 'id')::bigint)"),
        }


def probe(app: Durable, runs: int, workers: int, seed: int, processes: bool) -> dict[str, Any]:
    """Set up, hammer with `workers` writers (processes, or threads), check."""
    setup(app)
    jobs = [(DSN, app.schema, mover, runs // workers, seed) for mover in range(workers)]
    if processes:
        with get_context("spawn").Pool(workers) as pool:
            committed = sum(c for done in pool.map(move, jobs) for c in done)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            committed = sum(c for done in pool.map(move, jobs) for c in done)
    return violations(app.schema, committed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with bench_app() as (app, _):
        found = probe(app, args.runs, args.workers, args.seed, processes=True)
    for what, value in found.items():
        print(f"{what}: {value}")
    print(describe())


if __name__ == "__main__":
    main()
