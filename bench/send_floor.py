"""Where a bulk send's time goes in Postgres: `send_events` for 1,000 events
(each starting a run) beside plain INSERTs of the same rows into the same
tables, with the same indexes.

    python bench/send_floor.py [--calls 20]

Each call is its own transaction (its commit's fsync included), on a schema
that already holds 5,000 sends. Reported: median ms per 1,000 events, for

- `send_events` as `app.send` calls it (the parameters captured from it);
- the rows alone: events, runs and queue rows inserted by plain SQL;
- the events alone, with and without `ON CONFLICT (id) DO NOTHING` (how
  sends skip an id already stored);
- 1,000 calls of the `uuid_v7()` that makes run ids.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import psycopg
from common import DSN, bench_app, describe, send_in_batches

from pgdurable import Event
from pgdurable._store import Store, _send_params


def captured_sends(app: Any, calls: int) -> list[tuple[str, str, Any]]:
    """The parameters `app.send` gives send_events for `calls` sends of
    1,000 events, none of them sent."""
    captured = []
    original = Store.send_events

    class Captured(Exception):
        pass

    def capture(self: Store, events: Any, runs: Any, window: Any, generated: bool = False) -> Any:
        captured.append(_send_params(events, runs, window))
        raise Captured

    Store.send_events = capture  # type: ignore[method-assign]
    try:
        for _ in range(calls):
            with suppress(Captured):
                app.send([Event("bench/w1", {"i": i, "k": i % 100}) for i in range(1000)])
    finally:
        Store.send_events = original  # type: ignore[method-assign]
    return captured


def timed(conn: psycopg.Connection[Any], statements: list[str], params: Any = None) -> float:
    began = time.perf_counter()
    with conn.transaction():
        for statement in statements:
            conn.execute(statement.encode(), params)
    return (time.perf_counter() - began) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    with bench_app() as (app, s):
        app.function(id="one-step", event="bench/w1")(lambda ctx: None)
        send_in_batches(app, "bench/w1", ({"i": i, "k": i % 100} for i in range(5000)))
        sends = captured_sends(app, args.calls)
        events = ("INSERT INTO {s}.events (id, name, data, ts, received_at) SELECT "
                  "'{tag}-{n}-' || g, 'bench/w1', jsonb_build_object('i', g, 'k', g % 100), now(), "
                  "clock_timestamp() FROM generate_series(1, 1000) g")
        rows = [events,
                "WITH r AS (INSERT INTO {s}.runs (id, function_id, event_ids) "
                "SELECT {s}.uuid_v7(), 'one-step', ARRAY['{tag}-{n}-' || g] "
                "FROM generate_series(1, 1000) g RETURNING id, event_ids[1] AS e) "
                "INSERT INTO {s}.queue (run_id, function_id, event_id, available_at, retries, "
                "status, lease_token) SELECT id, 'one-step', e, now(), 3, 'queued', 0 FROM r"]
        cases: dict[str, Callable[[int], list[str]]] = {
            "send_events": lambda n: [f"SELECT FROM {s}.send_events(%s::jsonb, %s::jsonb, %s::interval)"],
            "the rows alone": lambda n: [q.format(s=s, tag="rows", n=n) for q in rows],
            "events, ON CONFLICT DO NOTHING": lambda n: [
                events.format(s=s, tag="conflict", n=n) + " ON CONFLICT (id) DO NOTHING RETURNING id"],
            "events, plain INSERT": lambda n: [events.format(s=s, tag="plain", n=n)],
            "uuid_v7() x 1,000": lambda n: [f"SELECT count({s}.uuid_v7()) FROM generate_series(1, 1000)"],
        }
        times: dict[str, list[float]] = {case: [] for case in cases}
        with psycopg.connect(DSN, autocommit=True) as conn:
            for n, params in enumerate(sends):
                for case, statements in cases.items():
                    times[case].append(timed(conn, statements(n), params if case == "send_events" else None))
    for case, ms in times.items():
        print(f"{case}: {statistics.median(ms):.1f} ms per 1,000 (median of {len(ms)})")
    print(describe())


if __name__ == "__main__":
    main()
