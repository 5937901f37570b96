"""Probe: a wait misses no event sent after the step before it began
(issue 22, section 2), whatever the sender's transaction age.

    python bench/probe_waits.py [--runs 400] [--workers 3] [--seed 1]

Each run executes step "a" (recording when it began, on the database's
clock; it lasts 0-0.3 s) and then waits for its own `go` event. For each
run a sender opens a transaction at a random moment (often before step
"a"), sends the event with `conn=` a random while after step "a" began
(during it, or once the run waits), recording when, and commits a little
later. Then, by SQL: every run got its event.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
from common import DSN, describe, probe_arguments, probe_setup, wait_for

from pgdurable import Event


def main() -> None:
    args = probe_arguments(runs=400)
    rng = random.Random(args.seed)
    tables = ["effects (run_id uuid, step text, at timestamptz, began timestamptz)",
              "sends (run_id uuid, at timestamptz)"]
    with probe_setup(["awaits"], tables, args.workers, threads=8) as (app, db, schema):
        runs = [app.runs_for_event(e)[0].id
                for e in app.send([Event("awaits", {"n": n}) for n in range(args.runs)])]

        def sender(n: int, begin: float, send: float, commit: float) -> None:
            time.sleep(begin)
            with psycopg.connect(DSN) as conn, psycopg.connect(DSN, autocommit=True) as look:
                conn.execute("SELECT 1")  # the transaction begins, maybe before step "a"
                wait_for(lambda: look.execute(
                    f"SELECT 1 FROM {schema}.effects WHERE run_id = %s", (runs[n],)
                ).fetchone() is not None, timeout=60, interval=0.005)
                time.sleep(send)  # step "a" lasts 0-0.3 s: during it, or after
                look.execute(f"INSERT INTO {schema}.sends VALUES (%s, clock_timestamp())",
                             (runs[n],))
                app.send("go", {"n": n}, conn=conn)
                time.sleep(commit)

        timings = [(n, rng.uniform(0, 0.5), rng.uniform(0, 0.4), rng.uniform(0, 0.05))
                   for n in range(args.runs)]
        with ThreadPoolExecutor(max_workers=30) as pool:  # 2 connections each
            for done in [pool.submit(sender, *timing) for timing in timings]:
                done.result()
        wait_for(lambda: db.execute(f"SELECT count(*) FROM {schema}.queue").fetchone() == (0,),
                 timeout=120)
        check(db, schema, len(runs))


def check(db: psycopg.Connection, schema: str, runs: int) -> None:  # type: ignore[type-arg]
    rows = db.execute(f"""
        SELECT count(*) FILTER (WHERE s.at >= a.at),
               count(*) FILTER (WHERE s.at >= a.at AND res.output #>> '{{}}' IS DISTINCT FROM e.id)
        FROM {schema}.runs r
        JOIN {schema}.events t ON t.id = r.event_ids[1]
        JOIN {schema}.events e ON e.name = 'go' AND e.data -> 'n' = t.data -> 'n'
        JOIN {schema}.effects a ON a.run_id = r.id AND a.step = 'a'
        JOIN {schema}.sends s ON s.run_id = r.id
        JOIN {schema}.results res ON res.run_id = r.id
        WHERE r.function_id = 'awaits'""").fetchone()
    assert rows is not None
    after, missed = rows
    print(f"wait probe: {runs} runs; events sent after step 'a' began: {after}, of which "
          f"missed by the wait: {missed} ({describe()})")
    assert after == runs and missed == 0


if __name__ == "__main__":
    main()
