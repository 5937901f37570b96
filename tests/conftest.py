"""Fixtures: one PostgreSQL server per session, one fresh schema per test.

The server is the pytest plugin's (`pgdurable_dsn`): PGDURABLE_TEST_DSN if
set, else 127.0.0.1:5432 if it answers, else a throwaway cluster started
here and stopped at the end; the report says which. It is found when the
first test asks for it, so the unit tier (tests/unit) runs without any.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from pgdurable import Context, Durable
from pgdurable.testing import pgbouncer, pgbouncer_binary


@pytest.fixture(scope="session")
def dsn(pgdurable_dsn: str) -> str:
    return pgdurable_dsn


@pytest.fixture(scope="session")
def pooler_dsn(dsn: str) -> Iterator[str]:
    """The test server through Debian's PgBouncer in transaction pooling mode."""
    if pgbouncer_binary() is None:
        if os.environ.get("PGDURABLE_REQUIRE_POOLER"):
            raise RuntimeError("pgbouncer is needed: apt-get install pgbouncer")
        pytest.skip("no pgbouncer (apt-get install pgbouncer)")
    with pgbouncer(dsn) as pooled:
        yield pooled


@pytest.fixture
def schema(pgdurable_schema: str) -> str:
    return pgdurable_schema


# The integration subset that runs twice: straight to Postgres, and through
# PgBouncer in transaction mode with a direct listen_dsn (issue 17, s3).
THROUGH_POOLER = {"test_async", "test_events", "test_steps", "test_waits", "test_flow", "test_rls",
                  "test_transactions"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ in THROUGH_POOLER and "make_app" in metafunc.fixturenames:
        metafunc.parametrize("route", ["direct", "pooler"], indirect=True)


@pytest.fixture
def route(request: pytest.FixtureRequest) -> str:
    """How the test's apps reach Postgres: "direct", or through the "pooler"."""
    return str(getattr(request, "param", "direct"))


@pytest.fixture
def make_app(
    dsn: str, schema: str, route: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Durable]]:
    """Apps on the test's schema, with fast retries; all stopped at teardown."""
    apps: list[Durable] = []
    pooled = request.getfixturevalue("pooler_dsn") if route == "pooler" else None

    def make(**options: Any) -> Durable:
        if pooled is not None and "dsn" not in options and "pool" not in options:
            options |= {"dsn": pooled, "listen_dsn": dsn}
        options.setdefault("retry_backoff", ("20ms", "200ms"))
        options.setdefault("lease", "2s")
        app = Durable(options.pop("dsn", dsn), schema=schema, **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop(timeout=5)


@pytest.fixture
def app(make_app: Callable[..., Durable]) -> Durable:
    app = make_app()
    app.migrate()
    return app


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for the test's own queries."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def run_of(app: Durable, event: str, data: dict[str, Any] | None = None) -> str:
    """Send one event and return the id of the one run it triggers."""
    [event_id] = app.send(event, data or {})
    [run] = app.runs_for_event(event_id)
    return run.id


def count(db: psycopg.Connection[Any], schema: str, rows: str) -> int:
    """How many rows `rows` ("events", or "effects WHERE ...") of `schema` holds."""
    row = db.execute(f"SELECT count(*) FROM {schema}.{rows}").fetchone()
    assert row is not None
    return int(row[0])


def status_of(app: Durable, run_id: str) -> str:
    run = app.get_run(run_id)
    assert run is not None
    return run.status


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def send_from_threads(count: int, send: Callable[[int], object]) -> None:
    """Call send(sender_number) from `count` threads at once."""
    threads = [threading.Thread(target=send, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def memory_tracing() -> tuple[Any, Any]:
    """A tracer provider of the test's own, and the in-memory exporter its
    spans go to as they end (needs the OpenTelemetry SDK)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


class WorkerProcess:
    """A `pgdurable worker` subprocess running tests/procapp.py."""

    def __init__(self, dsn: str, schema: str, threads: int = 4, **env: str) -> None:
        environment = {**os.environ, "PGDURABLE_DSN": dsn, "PGDURABLE_SCHEMA": schema, **env}
        environment["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(__file__), environment.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgdurable", "--log-level", "WARNING", "worker",
             "procapp:app", "--threads", str(threads)],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def output(self) -> str:
        out, _ = self.proc.communicate(timeout=30)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def worker_process(
    dsn: str, schema: str, route: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []
    through = ({"PGDURABLE_LISTEN_DSN": dsn} if route == "pooler" else {})
    app_dsn = request.getfixturevalue("pooler_dsn") if route == "pooler" else dsn

    def start(threads: int = 4, **env: str) -> WorkerProcess:
        process = WorkerProcess(app_dsn, schema, threads, **through, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def receipt_story(app: Durable) -> dict[str, str]:
    """The dashboard's tests' runs of a `receipt` function (ocr, an optional
    nap, total), its worker started: `ok` completed, `bad` failed at step
    'total' (its data says broken, and not fixed), `asleep` sleeping."""
    @app.function(id="receipt", event="receipt/uploaded", retries=0)
    def receipt(ctx: Context) -> Any:
        text = ctx.step.run("ocr", lambda: f"text of {ctx.event.data['key']}")
        if ctx.event.data.get("nap"):
            ctx.step.sleep("nap", "1h")

        def total() -> float:
            if ctx.event.data.get("broken") and not ctx.event.data.get("fixed"):
                raise ValueError("no total in the text")
            return 12.5

        return {"text": text, "total": ctx.step.run("total", total)}

    app.start(threads=2, poll_interval=0.1)
    ok = app.wait_for_run(run_of(app, "receipt/uploaded", {"key": "a.png"}), 20).id
    bad = app.wait_for_run(run_of(app, "receipt/uploaded", {"key": "b.png", "broken": True}), 20).id
    asleep = run_of(app, "receipt/uploaded", {"key": "c.png", "nap": True})
    wait_for_status(app, asleep, "sleeping")
    return {"ok": ok, "bad": bad, "asleep": asleep}


def wait_for_status(app: Durable, run_id: str, status: str) -> None:
    wait_until(lambda: app.get_run(run_id).status == status, 20,  # type: ignore[union-attr]
               f"run {run_id} to be {status}")


BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py, whose short version a test runs."""
    spec = importlib.util.spec_from_file_location(f"pgdurable_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module
