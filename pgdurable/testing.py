"""Test helpers: find or start a PostgreSQL server (and a PgBouncer in front
of it), isolated schemas, and (for pgdurable's own tests and benchmarks) an
app's internals.

Order: `PGDURABLE_TEST_DSN` if set; else a server on 127.0.0.1:5432 if one
answers; else a throwaway cluster in a temporary folder (see embedded.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
from psycopg import sql

from .embedded import EmbeddedPostgres, _free_port
from .errors import DurableError

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


def pgbouncer_binary() -> str | None:
    """Debian's PgBouncer (`apt-get install pgbouncer`), if installed."""
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)


@contextmanager
def pgbouncer(dsn: str, *, pool_size: int = 20) -> Iterator[str]:
    """A PgBouncer in transaction pooling mode in front of `dsn`'s server
    (trust authentication; run as `postgres` when we are root, as it refuses
    root), for as long as the block lasts; yields the DSN through it. Its
    admin console is the `pgbouncer` database, for `dsn`'s user."""
    binary = pgbouncer_binary()
    if binary is None:
        raise DurableError("pgbouncer is not installed: apt-get install pgbouncer")
    server = psycopg.conninfo.conninfo_to_dict(dsn)
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="pgdurable-pgbouncer-")
    user = str(server.get("user") or "postgres")
    with open(os.path.join(folder, "users.txt"), "w") as users:
        users.write(f'"{user}" ""\n')
    with open(os.path.join(folder, "pgbouncer.ini"), "w") as ini:
        ini.write(
            f"[databases]\n* = host={server.get('host') or '127.0.0.1'} "
            f"port={server.get('port') or 5432}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n"
            f"auth_file = {folder}/users.txt\npool_mode = transaction\nmax_client_conn = 1000\n"
            f"default_pool_size = {pool_size}\nunix_socket_dir =\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"admin_users = {user}\nlogfile = {folder}/pgbouncer.log\n")
    command = [binary, os.path.join(folder, "pgbouncer.ini")]
    if os.geteuid() == 0:
        for path in (folder, *(os.path.join(folder, f) for f in os.listdir(folder))):
            shutil.chown(path, "postgres")
        command = ["runuser", "-u", "postgres", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pooled = psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 20
        while not _answers(pooled):
            if time.monotonic() > deadline or process.poll() is not None:
                raise DurableError(f"pgbouncer did not start (see {folder}/pgbouncer.log)")
            time.sleep(0.1)
        yield pooled
    finally:
        process.terminate()
        process.wait(10)
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
    return Internals(app._store, app._db.pool, app._functions)
