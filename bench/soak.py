"""Worker memory: RSS with 10,000 runs held, and over a long W1-like load.

    python bench/soak.py [--held 10000] [--minutes 30] [--rate 1000]

One `pgdurable worker` process (bench/soak_app.py, `--async-runs` = held)
is measured from /proc: idle; with `--held` runs sleeping (parked in the
database); with `--held` async runs executing at once (each awaiting
inside a step); then every 10 s while a sender here queues `--rate`
one-step runs a second for `--minutes`. Flat means the last fifth of the
soak's samples average within 10% of the first fifth's (after a minute of
warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import psycopg
from common import DSN, bench_app, describe, wait_for

from pgdurable import Event

SAMPLE_EVERY = 10.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def count(db: psycopg.Connection[object], query: str) -> int:
    row = db.execute(query).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--held", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=1000, help="W1 runs sent per second")
    args = parser.parse_args()
    with bench_app() as (app, schema), psycopg.connect(DSN, autocommit=True) as db:
        for function_id, event in (("w1", "soak/w1"), ("nap", "soak/nap"), ("hold", "soak/hold")):
            app.function(id=function_id, event=event)(lambda ctx: None)  # the sender's view
        here = os.path.dirname(os.path.abspath(__file__))
        env = {**os.environ, "PGDURABLE_DSN": DSN, "PGDURABLE_SCHEMA": schema,
               "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
        worker = subprocess.Popen([sys.executable, "-m", "pgdurable", "--log-level", "WARNING",
                                   "worker", "soak_app:app", "--async-runs", str(args.held)], env=env)
        try:
            q = f"{schema}.queue"
            wait_for(lambda: count(db, f"SELECT count(*) FROM {schema}.workers") > 0, 60)
            print(f"idle: {rss_mib(worker.pid):.0f} MiB")
            sleeping = f"SELECT count(*) FROM {q} WHERE status = 'sleeping'"
            for start in range(0, args.held, 1000):
                app.send([Event("soak/nap", {}) for _ in range(min(1000, args.held - start))])
            wait_for(lambda: count(db, sleeping) == args.held, 300, 0.5)
            print(f"{args.held:,} runs sleeping: {rss_mib(worker.pid):.0f} MiB")
            for start in range(0, args.held, 1000):
                app.send([Event("soak/hold", {"seconds": 20}) for _ in range(min(1000, args.held - start))])
            running = f"SELECT count(*) FROM {q} WHERE status = 'running' AND function_id = 'hold'"
            wait_for(lambda: count(db, running) == args.held, 300, 0.2)
            print(f"{args.held:,} async runs executing at once: {rss_mib(worker.pid):.0f} MiB")
            wait_for(lambda: count(db, running) == 0, 300, 0.5)
            print(f"after they ended: {rss_mib(worker.pid):.0f} MiB")
            soak(app, db, worker.pid, schema, args)
        finally:
            worker.terminate()
            worker.wait(60)
    print(describe())


def soak(app: object, db: psycopg.Connection[object], pid: int, schema: str,
         args: argparse.Namespace) -> None:
    samples: list[tuple[float, float, int]] = []  # (minutes, MiB, queue depth)
    began = time.monotonic()
    next_sample = began + SAMPLE_EVERY
    sent = 0
    while (elapsed := time.monotonic() - began) < args.minutes * 60:
        due = int(elapsed * args.rate)
        if due > sent:
            batch = min(due - sent, 1000)
            app.send([Event("soak/w1", {"i": sent + n}) for n in range(batch)])  # type: ignore[attr-defined]
            sent += batch
        else:
            time.sleep(0.05)
        if time.monotonic() >= next_sample:
            next_sample += SAMPLE_EVERY
            depth = count(db, f"SELECT count(*) FROM {schema}.queue WHERE function_id = 'w1'")
            samples.append((elapsed / 60, rss_mib(pid), depth))
            print(f"  {elapsed / 60:5.1f} min: {samples[-1][1]:.0f} MiB, {depth} queued, {sent:,} sent",
                  flush=True)
    warm = [s for s in samples if s[0] >= 1.0]
    fifth = max(1, len(warm) // 5)
    first, last = (statistics.mean(s[1] for s in part) for part in (warm[:fifth], warm[-fifth:]))
    most = max(s[1] for s in warm)
    print(f"soak: {args.minutes:g} min at {args.rate}/s, {sent:,} runs: RSS first fifth "
          f"{first:.0f} MiB, last fifth {last:.0f} MiB ({(last / first - 1) * 100:+.1f}%), "
          f"max {most:.0f} MiB, deepest queue {max(s[2] for s in samples):,}")


if __name__ == "__main__":
    main()
