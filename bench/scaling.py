"""Many hosts: W1 and W3 on 1, 2, 4 and 8 worker processes through PgBouncer,
a concurrency limit across all of them, and the connections each takes.

    python bench/scaling.py [--processes 1,2,4,8] [--w1 20000] [--w3 5000] [--threads 8]

Each process stands for a host: `pgdurable worker scale_app:app`, its pool
(`pool_size=4`) through PgBouncer in transaction mode (pool of 20 server
connections), LISTEN straight to Postgres. For each count: the W1 and W3
queues are filled first, then the processes spawned and timed until the
queue is empty (start-up included); `limited` (Concurrency(limit=5), a
50 ms step) is run the same way and its greatest overlap measured by SQL.
Connections are sampled every 0.2 s: clients at PgBouncer, and server
connections at Postgres (PgBouncer's plus the LISTEN ones).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import psycopg
from common import DSN, describe, send_in_batches, wait_for

from pgdurable import Concurrency, Durable
from pgdurable.testing import drop_schema, new_schema_name, pgbouncer

HERE = os.path.dirname(os.path.abspath(__file__))
LIMIT = 5  # `limited`'s concurrency limit, across all processes


class Peaks:
    """The most connections seen at once while a phase runs: clients at
    PgBouncer beyond those open before it began (the sender's), and all
    server connections at Postgres (PgBouncer's, busy or idle, and the
    workers' LISTEN ones; not the sampler's)."""

    def __init__(self, pooled: str) -> None:
        self.clients = self.servers = 0
        self._baseline: tuple[int, int] | None = None
        self._admin = psycopg.conninfo.make_conninfo(pooled, dbname="pgbouncer")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        # The admin console speaks only the simple query protocol: a ClientCursor's.
        with psycopg.connect(self._admin, autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as admin, \
                psycopg.connect(DSN, autocommit=True, application_name="scaling") as db:
            while not self._stop.wait(0.2):
                clients = sum(1 for row in admin.execute("SHOW CLIENTS").fetchall()
                              if row[2] != "pgbouncer")  # the database column
                row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                 "'client backend' AND application_name <> 'scaling' "
                                 "AND datname = current_database()").fetchone()
                servers = row[0] if row else 0
                self._baseline = self._baseline or (clients, servers)
                self.clients = max(self.clients, clients)
                self.servers = max(self.servers, servers)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        clients, _ = self._baseline or (0, 0)
        return self.clients - clients, self.servers


def phase(pooled: str, schema: str, processes: int, threads: int, event: str, count: int,
          app: Durable) -> tuple[float, tuple[int, int]]:
    """Queue `count` events, spawn the processes, time them to an empty queue."""
    send_in_batches(app, event, ({"i": i} for i in range(count)))
    env = {**os.environ, "PGDURABLE_DSN": pooled, "PGDURABLE_LISTEN_DSN": DSN,
           "PGDURABLE_SCHEMA": schema, "PGDURABLE_LIMIT": str(LIMIT),
           "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    peaks = Peaks(pooled)
    time.sleep(0.5)  # its baseline
    began = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "pgdurable", "--log-level", "ERROR",
                                 "worker", "scale_app:app", "--threads", str(threads)],
                                env=env, cwd=HERE) for _ in range(processes)]
    try:
        with psycopg.connect(DSN, autocommit=True) as db:
            wait_for(lambda: bool(db.execute(
                f"SELECT NOT EXISTS (SELECT FROM {schema}.queue)").fetchone()[0]),  # type: ignore[index]
                timeout=900, interval=0.02)
        elapsed = time.perf_counter() - began
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)
    return elapsed, peaks.stop()


def greatest_overlap(schema: str) -> int:
    with psycopg.connect(DSN) as db:
        row = db.execute(
            f"SELECT max(running) FROM (SELECT sum(d) OVER (ORDER BY at, d) AS running FROM ("
            f" SELECT began AS at, 1 AS d FROM {schema}.spans UNION ALL"
            f" SELECT ended, -1 FROM {schema}.spans) AS edges) AS x").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--w1", type=int, default=20_000)
    parser.add_argument("--w3", type=int, default=5_000)
    parser.add_argument("--limited", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    print(f"# {describe()}; threads={args.threads} per process, pool_size=4, "
          "PgBouncer transaction mode, default_pool_size=20")
    print("| processes | W1 runs/s | W3 steps/s | limited: most at once (limit 5) "
          "| PgBouncer clients (workers') | Postgres connections |")
    print("|---|---|---|---|---|---|")
    with pgbouncer(DSN, pool_size=20) as pooled:
        for processes in (int(n) for n in args.processes.split(",")):
            schema = new_schema_name()
            app = Durable(pooled, schema=schema, listen_dsn=DSN)
            try:
                app.migrate()
                # The sender works out each run's options: it must know the limit.
                for fid, event in (("one-step", "bench/w1"), ("five-steps", "bench/w3")):
                    app.function(id=fid, event=event)(lambda ctx: None)
                app.function(id="limited", event="bench/limited",
                             concurrency=Concurrency(limit=LIMIT))(lambda ctx: None)
                with psycopg.connect(DSN, autocommit=True) as db:
                    db.execute(f"CREATE TABLE {schema}.spans (run_id uuid, began timestamptz, "
                               "ended timestamptz)")
                    db.execute("CHECKPOINT")
                w1, peaks1 = phase(pooled, schema, processes, args.threads, "bench/w1", args.w1, app)
                w3, peaks3 = phase(pooled, schema, processes, args.threads, "bench/w3", args.w3, app)
                _, peaks_l = phase(pooled, schema, processes, args.threads, "bench/limited",
                                   args.limited, app)
                overlap = greatest_overlap(schema)
                clients = max(peaks1[0], peaks3[0], peaks_l[0])
                servers = max(peaks1[1], peaks3[1], peaks_l[1])
                print(f"| {processes} | {args.w1 / w1:,.0f} | {args.w3 * 5 / w3:,.0f} | "
                      f"{overlap}{' (OVER THE LIMIT)' if overlap > LIMIT else ''} | "
                      f"{clients} ({clients / processes:.1f} per process) | {servers} |", flush=True)
            finally:
                app.stop()
                drop_schema(DSN, schema)



if __name__ == "__main__":
    main()
