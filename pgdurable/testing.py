"""Test helpers: run a function to its end in milliseconds (`execute`), find
or start a PostgreSQL server (and a PgBouncer in front of it), isolated
schemas, and (for pgdurable's own tests and benchmarks) an app's internals.
The pytest plugin (`pgdurable.pytest_plugin`) builds fixtures on these.

Order: `PGDURABLE_TEST_DSN` if set; else a server on 127.0.0.1:5432 if one
answers; else a throwaway cluster in a temporary folder (see embedded.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import psycopg
from psycopg import sql
from pydantic import BaseModel

from . import _serde as serde
from ._app import Durable
from ._events import Event, new_event_id, prepare
from ._functions import start_options
from .embedded import EmbeddedPostgres, _free_port
from .errors import ConfigurationError, DurableError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from ._functions import FunctionDef
    from ._runs import Run
    from ._store import Query, Store

T = TypeVar("T")

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


# -- running a function in a test ---------------------------------------------

TEST_EVENT = "pgdurable/test"  # the event of a run of a function with no event trigger
_FIRST_POLL, _LAST_POLL = 0.002, 0.05


class StuckRunError(DurableError, AssertionError):
    """`execute`'s run waits for an event with no timeout, and nothing else
    of it can go on: the test must give the wait's value in `steps=`."""


def copy_app(app: Durable, dsn: str, schema: str) -> Durable:
    """A Durable on `dsn` and `schema` with `app`'s functions and event
    models, and its settings of events, outputs, leases, retention and RLS:
    the app as a test runs it, on a database and schema of the test's own."""
    copy = Durable(dsn, schema=schema, lease=app.lease, dedupe_window=app.dedupe_window,
                   max_event_bytes=app.max_event_bytes, max_output_bytes=app.max_output_bytes,
                   retention=app.retention, user_setting=app.rls.user_setting,
                   bypass_setting=app.rls.bypass_setting, bypass_role=app.rls.bypass_role)
    copy._functions.update(app._functions)
    copy._triggers.update({name: list(fdefs) for name, fdefs in app._triggers.items()})
    copy._schemas.update(app._schemas)
    return copy


def execute(
    app: Durable, function_id: str, data: Any = None, *,
    steps: Mapping[str, Any] | None = None, timeout: float = 30.0,
) -> Run:
    """Run one run of `function_id` to its end, on `app`'s database, and
    return it (terminal). Errors inside the function end the run as they
    would in production: its `status` and `error` say so.

    `data` is its triggering event's data (checked as a send checks it).
    `steps` maps step ids (`id:1`, `id:2`... for repeats) to what they
    return without executing: a `step.run`'s value, a `wait_for_event`'s
    event (a `pgdurable.Event`; None for a timeout), an `invoke`'s child's
    output. Steps not given run for real, children included. Sleeps, retry
    backoffs and the timeouts of waits and invokes pass at once. The journal
    stays for the test to assert on (`app.get_steps(run.id)`).

    Starts `app`'s worker if it is not running (stop it with `app.stop()`).
    Raises StuckRunError if the run waits with no timeout for an event
    nothing can send, TimeoutError past `timeout` seconds."""
    fdef = app._functions.get(function_id)
    if fdef is None:
        raise ConfigurationError(f"no function {function_id!r} is registered on this app")
    name = fdef.events[0] if fdef.events else TEST_EVENT
    event = prepare(Event(name, {} if data is None else data), app._schemas.get(name),
                    max_bytes=app.max_event_bytes)
    trigger = Event(name, json.loads(event.data_json), event.id, datetime.now(UTC))
    run_id = _query(app, app._store.start_test_run(
        function_id, event, fdef.retries, start_options(fdef, trigger) or None,
        _given_json(steps or {})))
    if app._worker is None:
        app.start(threads=4, poll_interval=0.05)
    deadline, delay = time.monotonic() + timeout, _FIRST_POLL
    while True:
        run = app.get_run(run_id)
        if run is not None and run.is_terminal:
            return run
        _, stuck = _query(app, app._store.elapse_test_run(run_id))
        if stuck:
            waits = ", ".join(f"step {w.step_key!r} for {w.event!r}" for w in app.get_waits(run_id))
            raise StuckRunError(f"run {run_id} of {function_id!r} waits with no timeout "
                                f"({waits or 'in a child run'}), and nothing else can send the "
                                "event: give the step's value in steps= (an Event, or None)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} of {function_id!r} is still "
                               f"{run.status if run else 'unknown'} after {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, _LAST_POLL)


def _given_json(steps: Mapping[str, Any]) -> str:
    """The values given in place of steps, as a JSON object (see execute)."""
    entries = []
    for key, value in steps.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"steps= maps step ids to values; {key!r} is not a step id")
        if isinstance(value, Event):  # what a wait_for_event returns: as the journal holds events
            data = value.data.model_dump(mode="json") if isinstance(value.data, BaseModel) \
                else value.data
            value = {"id": value.id or new_event_id(), "name": value.name, "data": data,
                     "ts": (value.ts or datetime.now(UTC)).isoformat()}
        entries.append(f"{json.dumps(key)}:{serde.dumps(value, what=f'the value of step {key!r}')}")
    return "{" + ",".join(entries) + "}"


def _query(app: Durable, query: Query[T]) -> T:
    return app._db.on_own(partial(app._store.execute, query=query))
