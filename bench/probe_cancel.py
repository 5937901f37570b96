"""Probe: a cancel that returned True is kept (issue 22, section 1).

    python bench/probe_cancel.py [--runs 600] [--workers 3] [--seed 1] [--async]

Runs of 3-4 steps, with plain code of random length between them, ending
in a wait, a sleep, an invoke, a retry in an hour or a last step, on
several worker processes. A canceller cancels each run at a random moment
(before it starts, while it runs, between steps, once parked) and records,
on the database's clock, when `app.cancel()` returned True. Then, by SQL:
every run whose cancel returned True ended `cancelled`, no step of it began
after that moment, no invoked child started after it, and nothing of it is
left in the queue or the waits. With `--async`, the runs' handler is
`async def`: they execute many at a time on each worker's event loop.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time

import psycopg
from common import describe, probe_arguments, probe_setup, wait_for

from pgdurable import Event


def main() -> None:
    args = probe_arguments(runs=600)
    function = "probe-async" if args.asynchronous else "probe"
    rng = random.Random(args.seed)
    tables = ["effects (run_id uuid, step text, at timestamptz, began timestamptz)",
              "cancels (run_id uuid, returned_at timestamptz)"]
    with probe_setup([function, "child"], tables, args.workers, threads=4) as (app, db, schema):
        started = time.perf_counter()
        runs = [app.runs_for_event(e)[0].id
                for e in app.send([Event(function, {"n": n}) for n in range(args.runs)])]

        def cancel(run_id: str, delay: float) -> None:
            time.sleep(delay)
            if app.cancel(run_id):
                db.execute(f"INSERT INTO {schema}.cancels VALUES (%s, clock_timestamp())",
                           (run_id,))

        cancellers = [threading.Thread(target=cancel, args=(r, rng.uniform(0, 3))) for r in runs]
        for thread in cancellers:
            thread.start()
        for thread in cancellers:
            thread.join()
        with contextlib.suppress(TimeoutError):  # what is left is counted below
            wait_for(lambda: db.execute(
                f"SELECT count(*) FROM {schema}.queue q JOIN {schema}.cancels c USING (run_id)"
            ).fetchone() == (0,), timeout=60)
        check(db, schema, args.runs, time.perf_counter() - started)


def check(db: psycopg.Connection, schema: str, runs: int, elapsed: float) -> None:  # type: ignore[type-arg]
    def one(query: str) -> int:
        row = db.execute(query.format(s=schema)).fetchone()
        return int(row[0]) if row else -1

    cancelled = one("SELECT count(*) FROM {s}.cancels")
    not_cancelled = one("SELECT count(*) FROM {s}.cancels c JOIN {s}.run_state r ON r.id = c.run_id "
                        "WHERE r.status <> 'cancelled'")
    late_steps = one("SELECT count(*) FROM {s}.cancels c JOIN {s}.effects e USING (run_id) "
                     "WHERE e.began > c.returned_at")
    late_writes = one("SELECT count(*) FROM {s}.cancels c JOIN {s}.effects e USING (run_id) "
                      "WHERE e.at > c.returned_at")
    late_children = one("SELECT count(*) FROM {s}.cancels c JOIN {s}.runs r "
                        "ON r.parent_run_id = c.run_id WHERE r.created_at > c.returned_at")
    left = one("SELECT count(*) FROM {s}.cancels c WHERE EXISTS (SELECT FROM {s}.waits w "
               "WHERE w.run_id = c.run_id) OR EXISTS (SELECT FROM {s}.queue q WHERE q.run_id = c.run_id)")
    print(f"cancel probe: {runs} runs, {cancelled} cancels returned True, in {elapsed:.1f} s; "
          f"not ended cancelled: {not_cancelled}; steps begun after the cancel returned: "
          f"{late_steps} (their writes committed after it: {late_writes}); children started "
          f"after it: {late_children}; left in queue or "
          f"waits: {left} ({describe()})")
    for run_id, step, late, write in db.execute(
            f"SELECT e.run_id, e.step, e.began - c.returned_at, e.at - c.returned_at "
            f"FROM {schema}.cancels c JOIN {schema}.effects e USING (run_id) "
            f"WHERE e.began > c.returned_at"):
        print(f"  a step begun after its run's cancel returned: run {run_id}, step {step}, "
              f"by {late} (its write: {write} after)")
    assert not_cancelled == late_steps == late_children == left == 0


if __name__ == "__main__":
    main()
