"""Worker memory: RSS with 10,000 runs held, and over a long W1-like load.

    python bench/soak.py [--held 10000] [--minutes 30] [--rate 1000]

One `pgdurable worker` process (bench/soak_app.py, `--async-runs` = held)
is measured from /proc: idle; with `--held` runs sleeping (parked in the
database); with `--held` async runs executing at once (each awaiting
inside a step); then every 10 s while a sender here queues `--rate`
one-step runs a second for `--minutes`. Flat means the last fifth of the
soak's samples average within 10% of the first fifth's (after a minute of
warm-up). tests/test_soak.py runs a short version.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from common import bench_app, describe, rss_mib, send_in_batches, wait_for

from pgdurable import Durable, Event


@dataclass
class Report:
    """RSS (MiB) of the worker process at each stage, and the soak's samples."""

    idle: float = 0.0
    sleeping: float = 0.0
    executing: float = 0.0
    after: float = 0.0
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (minutes, MiB, queued)
    sent: int = 0

    def fifths(self, warm: float) -> tuple[float, float]:
        """Mean RSS of the first and the last fifth of the samples after `warm` minutes."""
        kept = [s[1] for s in self.samples if s[0] >= warm]
        fifth = max(1, len(kept) // 5)
        return statistics.mean(kept[:fifth]), statistics.mean(kept[-fifth:])


def count(db: psycopg.Connection[Any], query: str) -> int:
    row = db.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


def measure(held: int, minutes: float, rate: int, sample_every: float = 10.0,
            hold: float = 20.0, say: Callable[[str], None] = print) -> Report:
    """The stages of the module's docstring; the held async runs each await `hold` seconds."""
    report = Report()
    with bench_app() as (app, schema), psycopg.connect(app.conninfo, autocommit=True) as db:
        for function_id, event in (("w1", "soak/w1"), ("nap", "soak/nap"), ("hold", "soak/hold")):
            app.function(id=function_id, event=event)(lambda ctx: None)  # the sender's view
        here = os.path.dirname(os.path.abspath(__file__))
        env = {**os.environ, "PGDURABLE_DSN": app.conninfo, "PGDURABLE_SCHEMA": schema,
               "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
        worker = subprocess.Popen([sys.executable, "-m", "pgdurable", "--log-level", "WARNING",
                                   "worker", "soak_app:app", "--async-runs", str(held)], env=env)
        try:
            q = f"{schema}.queue"
            wait_for(lambda: count(db, f"SELECT count(*) FROM {schema}.workers") > 0, 60)
            report.idle = rss_mib(worker.pid)
            send_in_batches(app, "soak/nap", ({} for _ in range(held)))
            wait_for(lambda: count(db, f"SELECT count(*) FROM {q} WHERE status = 'sleeping'") == held,
                     300, 0.2)
            report.sleeping = rss_mib(worker.pid)
            send_in_batches(app, "soak/hold", ({"seconds": hold} for _ in range(held)))
            running = f"SELECT count(*) FROM {q} WHERE status = 'running' AND function_id = 'hold'"
            wait_for(lambda: count(db, running) == held, 300, 0.2)
            report.executing = rss_mib(worker.pid)
            wait_for(lambda: count(db, running) == 0, 300, 0.5)
            report.after = rss_mib(worker.pid)
            say(f"idle {report.idle:.0f} MiB; {held:,} runs sleeping {report.sleeping:.0f} MiB; "
                f"{held:,} async runs executing at once {report.executing:.0f} MiB; "
                f"after they ended {report.after:.0f} MiB")
            soak(app, db, worker.pid, schema, minutes, rate, sample_every, report, say)
        finally:
            worker.terminate()
            worker.wait(60)
    return report


def soak(app: Durable, db: psycopg.Connection[Any], pid: int, schema: str, minutes: float,
         rate: int, sample_every: float, report: Report, say: Callable[[str], None]) -> None:
    """Send `rate` one-step runs a second for `minutes`; sample the worker's RSS."""
    began = time.monotonic()
    next_sample = began + sample_every
    while (elapsed := time.monotonic() - began) < minutes * 60:
        if (due := int(elapsed * rate)) > report.sent:
            batch = min(due - report.sent, 1000)
            app.send([Event("soak/w1", {"i": report.sent + n}) for n in range(batch)])
            report.sent += batch
        else:
            time.sleep(0.05)
        if time.monotonic() >= next_sample:
            next_sample += sample_every
            depth = count(db, f"SELECT count(*) FROM {schema}.queue WHERE function_id = 'w1'")
            report.samples.append((elapsed / 60, rss_mib(pid), depth))
            say(f"  {elapsed / 60:5.1f} min: {report.samples[-1][1]:.0f} MiB, {depth} queued, "
                f"{report.sent:,} sent")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--held", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=1000, help="W1 runs sent per second")
    args = parser.parse_args()
    report = measure(args.held, args.minutes, args.rate, say=lambda line: print(line, flush=True))
    first, last = report.fifths(warm=min(1.0, args.minutes / 5))
    print(f"soak: {args.minutes:g} min at {args.rate}/s, {report.sent:,} runs: RSS first fifth "
          f"{first:.0f} MiB, last fifth {last:.0f} MiB ({(last / first - 1) * 100:+.1f}%), "
          f"max {max(s[1] for s in report.samples):.0f} MiB, "
          f"deepest queue {max(s[2] for s in report.samples):,}")
    print(describe())


if __name__ == "__main__":
    main()
