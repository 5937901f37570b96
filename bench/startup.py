"""Worker start-up: from spawning `pgdurable worker` to its first run done.

    python bench/startup.py [--rounds 5]

One run waits in the queue; a worker process is spawned (`python -m
pgdurable worker scale_app:app --threads 4`) and timed until the run's
result is committed (polled every 5 ms), then stopped. Beside it, in fresh
interpreters: Python's own start (`python -c pass`) and `import pgdurable`,
which bound how fast any worker can start.
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

HERE = os.path.dirname(os.path.abspath(__file__))


def interpreter(code: str) -> float:
    """Seconds a fresh interpreter takes to run `code` and exit."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - began


def first_run(schema: str, db: psycopg.Connection[tuple[object, ...]]) -> float:
    """Seconds from spawning a worker to its first run's result."""
    env = {**os.environ, "PGDURABLE_DSN": DSN, "PGDURABLE_LISTEN_DSN": DSN,
           "PGDURABLE_SCHEMA": schema, "PGDURABLE_LIMIT": "1",
           "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    began = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "pgdurable", "--log-level", "ERROR",
                               "worker", "scale_app:app", "--threads", "4"], env=env, cwd=HERE)
    try:
        wait_for(lambda: db.execute(f"SELECT count(*) FROM {schema}.results").fetchone() == (1,),
                 timeout=60, interval=0.005)
        return time.perf_counter() - began
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    spawned, bare, imported = [], [], []
    for _ in range(args.rounds):
        with bench_app() as (app, schema), psycopg.connect(DSN, autocommit=True) as db:
            app.function(id="one-step", event="bench/w1")(lambda ctx: None)
            app.send("bench/w1", {})
            spawned.append(first_run(schema, db))
        bare.append(interpreter("pass"))
        imported.append(interpreter("import pgdurable"))
    print(f"start-up, {args.rounds} rounds, median (min-max) in s: spawn to first run done "
          f"{_summary(spawned)}; python -c pass {_summary(bare)}; python -c 'import pgdurable' "
          f"{_summary(imported)} ({describe()})")


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


if __name__ == "__main__":
    main()
