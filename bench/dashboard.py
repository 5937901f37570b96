"""The dashboard's pages beside a million retained runs (issue 16, s3):
render time of each page and JSON route, p50 and p95.

    python bench/dashboard.py [--runs 1000000] [--requests 50]

The schema holds --runs finished runs made over the last 7 days (in the
daily partitions of those days): 4 functions, 96 % completed, 2 % failed,
1 % cancelled, 1 % skipped, each with its event and 2 journal entries; and
2,000 queued runs. Each page is asked for
--requests times through the ASGI app in this process (Starlette's test
client: routing, the queries, the templates; no network), after one
request to warm it.
"""

from __future__ import annotations

import argparse
import time

import psycopg
from common import DSN, bench_app, describe, percentiles
from starlette.testclient import TestClient

from pgdurable import Durable, Event
from pgdurable.dashboard import create_app

MOMENT = "(%(start)s::timestamptz + g * interval '7 days' / %(n)s)"  # one clock for every table
RUN_ID = ("(left({s}.uuid_at(" + MOMENT + ")::text, 24) || lpad(to_hex(g), 12, '0'))::uuid")
FUNCTION = "('fn-' || (g %% 4))"
STATUS = ("(CASE WHEN g %% 100 < 96 THEN 'completed' WHEN g %% 100 < 98 THEN 'failed' "
          "WHEN g %% 100 = 98 THEN 'cancelled' ELSE 'skipped' END)")
ERROR = ("CASE WHEN " + STATUS + " = 'failed' THEN jsonb_build_object('type', 'ValueError', "
         "'message', 'no total in receipt ' || g, 'traceback', 'Traceback ...') END")
LOAD = [
    # partitions for the last 7 days, as a worker up all along would have made them
    "SELECT {s}.drop_partition(suffix, now()) FROM {s}.history_partitions",
    "INSERT INTO {s}.history_partitions (suffix, upper_id) VALUES "
    "('start', {s}.uuid_at(date_trunc('day', now() - interval '8 days')))",
    "SELECT {s}.add_partitions(1)",
    "DELETE FROM {s}.history_partitions WHERE suffix = 'start'",
    "INSERT INTO {s}.events (id, name, data, ts, received_at) SELECT 'ev-' || g, "
    "'receipt/uploaded', jsonb_build_object('key', 'r-' || g || '.jpg'), " + MOMENT + ", "
    + MOMENT + " FROM generate_series(1, %(n)s) g",
    "INSERT INTO {s}.runs (id, function_id, event_ids, created_at) SELECT " + RUN_ID + ", "
    + FUNCTION + ", ARRAY['ev-' || g], " + MOMENT + " FROM generate_series(1, %(n)s) g",
    "INSERT INTO {s}.results (run_id, status, output, error, attempt, started_at, finished_at) "
    "SELECT " + RUN_ID + ", " + STATUS + ", to_jsonb(g), " + ERROR + ", 0, " + MOMENT + ", "
    + MOMENT + " + interval '2 seconds' FROM generate_series(1, %(n)s) g",
    "INSERT INTO {s}.steps (run_id, step_key, position, status, output, started_at, finished_at) "
    "SELECT " + RUN_ID + ", k.key, k.pos, 'completed', to_jsonb(g), " + MOMENT + ", "
    + MOMENT + " + interval '1 second' FROM generate_series(1, %(n)s) g, "
    "(VALUES ('ocr', 1), ('total', 2)) k(key, pos)",
    "VACUUM ANALYZE {s}.events, {s}.runs, {s}.results, {s}.steps",
]
PAGES = ["/", "/runs", "/runs?status=failed", "/runs?function=fn-2",
         "/runs?function=fn-3&status=cancelled", "/runs?since=2h", "/runs/{failed}",
         "/runs/{completed}", "/events/ev-12345", "/functions", "/workers",
         "/api/runs?status=failed&limit=100", "/api/runs/{failed}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    print(describe(), flush=True)
    with bench_app() as (app, schema):
        started = time.perf_counter()
        load(app, schema, args.runs)
        print(f"loaded {args.runs:,} finished runs and 2,000 queued in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        web = TestClient(create_app(app), follow_redirects=False)
        failed = app.list_runs(status="failed", limit=1)[0].id
        completed = app.list_runs(status="completed", limit=1)[0].id
        print(f"{'page':<40} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for page in PAGES:
            path = page.format(failed=failed, completed=completed)
            assert web.get(path).status_code == 200, path
            times = []
            for _ in range(args.requests):
                begun = time.perf_counter()
                response = web.get(path)
                times.append((time.perf_counter() - begun) * 1000)
                assert response.status_code == 200, path
            cut = percentiles(times)
            print(f"{page:<40} {cut['p50']:>8.1f} {cut['p95']:>8.1f} {cut['max']:>8.1f}",
                  flush=True)


def load(app: Durable, schema: str, count: int) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        start = conn.execute("SELECT now() - interval '7 days'").fetchone()[0]  # type: ignore[index]
        for statement in LOAD:
            conn.execute(statement.format(s=schema).encode(), {"n": count, "start": start})
        conn.execute("CHECKPOINT")
    app.function(id="fn-0", event="receipt/uploaded")(lambda ctx: None)
    app.send([Event("receipt/uploaded", {"key": f"new-{i}"}) for i in range(2000)])


if __name__ == "__main__":
    main()
