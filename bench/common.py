"""Shared helpers for the benchmarks: a fresh schema, machine and server facts."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from pgdurable.testing import LOCAL_DSN, drop_schema, new_schema_name

DSN = os.environ.get("PGDURABLE_BENCH_DSN", LOCAL_DSN)
SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "max_connections", "server_version")


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


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": ordered[-1]}
