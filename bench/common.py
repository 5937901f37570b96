"""Shared helpers for the benchmarks: a fresh schema, machine and server facts."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pgdurable import Durable, Event
from pgdurable.testing import LOCAL_DSN, drop_schema, new_schema_name

DSN = os.environ.get("PGDURABLE_BENCH_DSN", LOCAL_DSN)
SETTINGS = ("fsync", "synchronous_commit", "autovacuum", "shared_buffers", "max_connections",
            "server_version")


def describe() -> str:
    with psycopg.connect(DSN) as conn:
        values = [f"{name}={conn.execute(f'SHOW {name}').fetchone()[0]}" for name in SETTINGS]  # type: ignore[index]
    return f"nproc={os.cpu_count()} " + " ".join(values)


@contextmanager
def fresh_schema() -> Iterator[str]:
    name = new_schema_name()
    try:
        yield name
    finally:
        drop_schema(DSN, name)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll until `predicate()`; return the time it took."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(interval)
    return time.perf_counter() - start


def rss_mib(pid: int | str = "self") -> float:
    """A process's resident memory, in MiB (this one's by default)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": ordered[-1]}


def drain_arguments(runs: int, threads: int, prefetch: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--prefetch", type=int, default=prefetch)
    parser.add_argument("--finished", type=int, default=0,
                        help="finished runs (with events, results, journal) to load first")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="give the function Concurrency(limit=this, key=data.k)")
    parser.add_argument("--keys", type=int, default=100, help="distinct values of data.k")
    parser.add_argument("--trace", action="store_true",
                        help="trace with the OpenTelemetry SDK, exporting to nowhere")
    parser.add_argument("--asyncio-sleep", type=float, default=None, metavar="S",
                        help="W3: an async handler whose steps await asyncio.sleep(S)")
    parser.add_argument("--async-runs", type=int, default=None,
                        help="app.start(async_runs=): async handlers executing at once")
    parser.add_argument("--metrics", action="store_true",
                        help="record OpenTelemetry metrics with the SDK")
    return parser.parse_args()


def telemetry(args: argparse.Namespace) -> dict[str, Any]:
    """The app's OpenTelemetry options. With --trace: an SDK tracer
    provider whose spans go (batched) to an exporter that drops them: the
    cost of making spans, not of shipping them. With --metrics: an SDK
    meter provider whose reader aggregates and is never collected."""
    options: dict[str, Any] = {}
    if args.trace:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Nowhere(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        options["tracer_provider"] = TracerProvider()
        options["tracer_provider"].add_span_processor(BatchSpanProcessor(Nowhere()))
    if args.metrics:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        options["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return options


# UUIDv7-shaped ids dated 2005: older than any run the benchmark creates.
OLD_RUN_ID = "('01000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid"


def load_finished(schema: str, function_id: str, count: int) -> None:
    """Fill the tables with `count` finished runs, as months of history would."""
    statements = [
        "INSERT INTO {s}.events (id, name, data, ts) SELECT 'old-' || g, 'old', "
        "jsonb_build_object('i', g), now() FROM generate_series(1, %(n)s) g",
        "INSERT INTO {s}.runs (id, function_id, event_ids) SELECT "
        "{old}, %(fn)s, ARRAY['old-' || g] FROM generate_series(1, %(n)s) g",
        "INSERT INTO {s}.results (run_id, status, output, attempt) SELECT "
        "{old}, 'completed', to_jsonb(g), 0 FROM generate_series(1, %(n)s) g",
        "INSERT INTO {s}.steps (run_id, step_key, position, status, output, started_at) SELECT "
        "{old}, 'work', 1, 'completed', to_jsonb(g), now() "
        "FROM generate_series(1, %(n)s) g",
        "VACUUM ANALYZE {s}.events, {s}.runs, {s}.results, {s}.steps",
        "CHECKPOINT",  # measure the drain, not the flush of the load
    ]
    with psycopg.connect(DSN, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.format(s=schema, old=OLD_RUN_ID).encode(),
                         {"n": count, "fn": function_id})


@contextmanager
def bench_app(**options: Any) -> Iterator[tuple[Durable, str]]:
    """An app on a fresh, migrated schema, stopped (and the schema dropped) after."""
    with fresh_schema() as schema:
        app = Durable(DSN, schema=schema, **options)
        app.migrate()
        try:
            yield app, schema
        finally:
            app.stop()


def send_in_batches(app: Durable, name: str, datas: Iterable[dict[str, Any]], size: int = 1000) -> None:
    """Send one `name` event per data dict, `size` per round trip."""
    batch: list[Event] = []
    for data in datas:
        batch.append(Event(name, data))
        if len(batch) == size:
            app.send(batch)
            batch = []
    if batch:
        app.send(batch)


def drain(app: Durable, schema: str, args: argparse.Namespace, event: str, function_id: str) -> float:
    """Load history if asked, queue `args.runs` events, start the worker and
    return the seconds until the queue is empty."""
    if args.finished:
        load_finished(schema, function_id, args.finished)
    send_in_batches(app, event, ({"i": i, "k": i % args.keys} for i in range(args.runs)))
    with psycopg.connect(DSN, autocommit=True) as conn:
        def done() -> bool:
            row = conn.execute(f"SELECT NOT EXISTS (SELECT FROM {schema}.queue)").fetchone()
            return bool(row and row[0])

        app.start(threads=args.threads, prefetch=args.prefetch,
                  **({} if args.async_runs is None else {"async_runs": args.async_runs}))
        return wait_for(done, timeout=600, interval=0.05)


def probe_arguments(runs: int) -> argparse.Namespace:
    """The options of the probes: how many runs, worker processes, and the seed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--async", dest="asynchronous", action="store_true",
                        help="the probe's async def handler, where it has one")
    return parser.parse_args()


@contextmanager
def probe_setup(
    functions: Iterable[str], tables: Iterable[str], workers: int, threads: int
) -> Iterator[tuple[Durable, psycopg.Connection[Any], str]]:
    """A fresh schema with `tables` (SQL column lists by name), a sending app
    that knows `functions` (each triggered by the event of its own name), and
    `workers` processes of `pgdurable worker probe_app:app`, stopped after."""
    with bench_app() as (app, schema), psycopg.connect(DSN, autocommit=True) as db:
        for function_id in functions:
            app.function(id=function_id, event=function_id)(lambda ctx: None)
        for table in tables:
            db.execute(f"CREATE TABLE {schema}.{table}")
        here = os.path.dirname(os.path.abspath(__file__))
        env = {**os.environ, "PGDURABLE_DSN": DSN, "PGDURABLE_SCHEMA": schema,
               "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
        processes = [subprocess.Popen([sys.executable, "-m", "pgdurable", "--log-level", "ERROR",
                                       "worker", "probe_app:app", "--threads", str(threads)],
                                      env=env) for _ in range(workers)]
        try:
            yield app, db, schema
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
