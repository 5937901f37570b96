"""Postgres going away and coming back, dead network paths, lost leases:
what callers see, what workers do, what is written."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import wait_for_status, wait_until

from pgdurable import Context, Durable, UnavailableError
from pgdurable._network import Watchdog
from pgdurable.embedded import EmbeddedPostgres, _free_port, _system_bindir
from pgdurable.testing import internals


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    """A Postgres server of the test's own, to stop and start again."""
    if _system_bindir() is None:
        pytest.skip("needs the system's PostgreSQL binaries (initdb, pg_ctl)")
    folder = tempfile.mkdtemp(prefix="pgdurable-private-")
    os.chmod(folder, 0o755)
    server = EmbeddedPostgres(folder, port=_free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _app(server: EmbeddedPostgres, **options: Any) -> Durable:
    assert server.dsn is not None
    app = Durable(server.dsn, schema="outage", lease="2s", retry_backoff=("20ms", "200ms"),
                  **options)
    app.migrate()
    return app


def test_calls_while_postgres_is_down_fail_clearly_after_connect_timeout(
    private_server: EmbeddedPostgres,
) -> None:
    """send, get_run and wait_for_run raise UnavailableError once
    connect_timeout has passed, never hang; the send, retried with its id
    once Postgres is back, lands once."""
    app = _app(private_server, connect_timeout=2)
    app.function(id="f", event="e")(lambda ctx: None)
    run_id = app.runs_for_event(app.send("e", {}, id="first")[0])[0].id
    private_server.stop()
    for call in (lambda: app.send("e", {}, id="second"), lambda: app.get_run(run_id),
                 lambda: app.wait_for_run(run_id, timeout=60)):
        began = time.monotonic()
        with pytest.raises(UnavailableError, match="Postgres"):
            call()
        assert 1.5 <= time.monotonic() - began < 10
    private_server.start()
    assert app.send("e", {}, id="second") == app.send("e", {}, id="second") == ["second"]
    assert len(app.runs_for_event("second")) == 1
    app.stop()


def test_a_restart_is_invisible_to_callers(private_server: EmbeddedPostgres) -> None:
    """The pool's connections all broke in the crash; the next calls take new ones."""
    app = _app(private_server)
    app.function(id="f", event="e")(lambda ctx: None)
    app.send("e", {}, id="before")
    private_server.restart(mode="immediate")
    assert app.send("e", {}, id="after") == ["after"]
    assert app.get_event("after") is not None
    app.stop()


def test_a_worker_recovers_by_itself_and_says_so_once(
    private_server: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(private_server, connect_timeout=2)
    app.function(id="f", event="e")(lambda ctx: "done")
    app.start(threads=2, poll_interval=0.2)
    wait_for_status(app, app.runs_for_event(app.send("e", {})[0])[0].id, "completed")
    caplog.set_level(logging.INFO, logger="pgdurable")
    private_server.stop()
    wait_until(lambda: "lost Postgres" in caplog.text, 30, "the outage to be said")
    time.sleep(1.0)  # let every thread meet the outage
    private_server.start()
    run_id = app.runs_for_event(app.send("e", {})[0])[0].id
    wait_for_status(app, run_id, "completed")
    wait_until(lambda: "reached Postgres again" in caplog.text, 30, "the recovery to be said")
    assert caplog.text.count("lost Postgres") == 1
    assert caplog.text.count("reached Postgres again") == 1
    app.stop()


def test_own_connections_bound_our_statements_not_user_code(app: Durable) -> None:
    """Our pooled connections carry keepalives on both ends and limits on
    pgdurable's statements; a transaction that runs user code (a
    transactional step, app.connection()) has the database's own limits."""
    app.send("warm-up", {})
    with internals(app).pool.connection() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle', "
            "'statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout')"
        ).fetchall())
        assert conn.info.get_parameters()["application_name"] == "pgdurable"
    assert settings == {"tcp_keepalives_idle": "10", "statement_timeout": "300000",
                        "lock_timeout": "60000", "idle_in_transaction_session_timeout": "60000"}
    defaults = {"statement_timeout": "0", "lock_timeout": "0",
                "idle_in_transaction_session_timeout": "0"}
    with app.connection() as conn:
        assert dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                                 (list(defaults),)).fetchall()) == defaults
    seen: dict[str, str] = {}

    @app.function(id="tx", event="tx")
    def tx(ctx: Context) -> None:
        ctx.step.transaction("look", lambda conn: seen.update(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (list(defaults),)).fetchall()))

    app.start(threads=1)
    wait_for_status(app, app.runs_for_event(app.send("tx", {})[0])[0].id, "completed")
    assert seen == defaults


def test_the_watchdog_cuts_a_round_trip_past_its_deadline(dsn: str) -> None:
    """As on a dead network path: the waiting thread fails at once."""
    watchdog = Watchdog("test-watchdog")
    with psycopg.connect(dsn, autocommit=True) as conn:
        watchdog.arm(conn, 0.3)
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - began < 5
        assert conn.broken
    with psycopg.connect(dsn, autocommit=True) as conn:  # disarmed in time: untouched
        watchdog.arm(conn, 5)
        conn.execute("SELECT pg_sleep(0.05)")
        watchdog.disarm()
        time.sleep(0.1)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    watchdog.close()


def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(
    app: Durable, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker cut off past its lease comes back to find its run taken
    over: its journal entry is not written, its handler does not reach the
    next step, and the run is left to the worker that holds it now."""
    stolen, executed = threading.Event(), []

    @app.function(id="f", event="e", retries=0)
    def f(ctx: Context) -> None:
        ctx.step.run("one", lambda: executed.append("one"))
        ctx.step.run("two", lambda: (stolen.wait(20), executed.append("two")))
        ctx.step.run("three", lambda: executed.append("three"))

    app.start(threads=1)
    run_id = app.runs_for_event(app.send("e", {})[0])[0].id
    wait_until(lambda: executed == ["one"] and app.get_steps(run_id), 20, "step one")
    table = f'"{app.schema}".queue'
    db.execute(f"UPDATE {table} SET lease_token = lease_token + 1, worker_id = 'thief', "
               "available_at = now() + interval '1 hour' WHERE run_id = %s", (run_id,))
    stolen.set()
    wait_until(lambda: "took it over" in caplog.text, 20, "the worker to find it lost")
    assert executed == ["one", "two"]
    assert [s.key for s in app.get_steps(run_id)] == ["one"]
    row = db.execute(f"SELECT status, worker_id FROM {table} WHERE run_id = %s",
                     (run_id,)).fetchone()
    assert row == ("running", "thief")


def test_a_run_taken_over_while_it_waited_for_a_thread_never_starts(
    app: Durable, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Claimed ahead (prefetched) while the only thread was busy, then taken
    over (as when its worker was cut off past the lease): none of its steps
    begins here once the thread is free (found by bench/chaos.py)."""
    release, executed = threading.Event(), []

    @app.function(id="f", event="e", retries=0)
    def f(ctx: Context) -> None:
        n = ctx.event.data["n"]
        ctx.step.run("work", lambda: (executed.append(n), n == 0 and release.wait(20)))

    app.start(threads=1, prefetch=4)
    run_of_first = app.runs_for_event(app.send("e", {"n": 0})[0])[0].id
    wait_until(lambda: executed == [0], 20, "the first run to hold the thread")
    second = app.runs_for_event(app.send("e", {"n": 1})[0])[0].id
    table = f'"{app.schema}".queue'
    wait_until(lambda: db.execute(f"SELECT status = 'running' FROM {table} WHERE run_id = %s",
                                  (second,)).fetchone() == (True,), 20, "the second claimed")
    db.execute(f"UPDATE {table} SET lease_token = lease_token + 1, worker_id = 'thief', "
               "available_at = now() + interval '1 hour' WHERE run_id = %s", (second,))
    time.sleep(app.lease.total_seconds())  # a takeover comes after the lease, not before
    release.set()
    wait_for_status(app, run_of_first, "completed")
    assert executed == [0]
    assert "took it over" in caplog.text


def test_health_says_live_and_ready_and_why_not(private_server: EmbeddedPostgres) -> None:
    """For probes: a working worker is live and ready; with Postgres down it
    is still live (no thread died: do not restart it) but not ready, and
    ready again once Postgres is back."""
    app = _app(private_server, connect_timeout=2)
    assert app.health().ready and not app.health().worker  # no worker here yet
    app.function(id="f", event="e")(lambda ctx: None)
    app.start(threads=1)
    health = app.health()
    assert health.live and health.ready and health.worker
    assert health.heartbeat_age is not None and health.heartbeat_age < app.lease.total_seconds()
    private_server.stop()
    down = app.health()
    assert down.live and not down.ready and not down.database
    assert "the database does not answer" in down.problems[0]
    began = time.monotonic()
    assert app.health(check_database=False).live
    assert time.monotonic() - began < 1
    private_server.start()
    wait_until(lambda: app.health().ready, 30, "ready again")
    app.stop()
