"""Test helpers: find or start a PostgreSQL server, isolated schemas, and
(for pgdurable's own tests and benchmarks) an app's internals.

Order: `PGDURABLE_TEST_DSN` if set; else a server on 127.0.0.1:5432 if one
answers; else a throwaway cluster in a temporary folder (see embedded.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
from psycopg import sql

from .embedded import EmbeddedPostgres

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from ._app import Durable
    from ._functions import FunctionDef
    from ._store import Store

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def test_server() -> Iterator[tuple[str, str]]:
    """Yield (dsn, how it was found) for the duration of a test session."""
    if dsn := os.environ.get("PGDURABLE_TEST_DSN"):
        yield dsn, "PGDURABLE_TEST_DSN"
        return
    if _answers(LOCAL_DSN):
        yield LOCAL_DSN, "the server on 127.0.0.1:5432"
        return
    folder = tempfile.mkdtemp(prefix="pgdurable-test-")
    os.chmod(folder, 0o755)
    server = EmbeddedPostgres(folder)
    try:
        yield server.start(), f"a throwaway cluster in {folder}"
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def new_schema_name() -> str:
    """A fresh schema name, for one test's app: tests never see each other's runs."""
    return f"t_{uuid.uuid4().hex[:16]}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop `schema` and everything in it (a test's, once it is done)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Internals(NamedTuple):
    """What `Durable` keeps to itself: its SQL gateway, its pool and its
    function table. Not a stable API: for tests that drive the SQL directly
    (claim a run by hand, flush a transition) and for benchmarks."""

    store: Store
    pool: ConnectionPool[Any]
    functions: dict[str, FunctionDef]


def internals(app: Durable) -> Internals:
    """`app`'s internals (see Internals)."""
    return Internals(app._store, app._pool, app._functions)
