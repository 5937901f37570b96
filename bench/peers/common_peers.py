"""Helpers for the peer benchmarks: one scratch database per peer."""

from __future__ import annotations

import os
import statistics

import psycopg

ADMIN_DSN = os.environ.get("PGDURABLE_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def fresh_database(name: str) -> str:
    """Drop and create database `name`; return its DSN."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(sorted(samples), n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}
