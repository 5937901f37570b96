"""Behind PgBouncer in transaction pooling mode (issue 17, s3): runs go
through it with no prepared statement and no session state left behind;
LISTEN and pruning use a direct connection (listen_dsn) or, without one,
polling and no pruning, as the log says."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_for_status

from pgdurable import Concurrency, ConfigurationError, Context, Durable


def through_everything(app: Durable) -> None:
    """Steps, a transactional step, a sleep, a wait for an event, an RLS
    context and a concurrency limit, through the pooler."""
    @app.function(id="order", event="order/placed", concurrency=Concurrency(limit=1),
                  retries=0)
    def order(ctx: Context) -> Any:
        total = ctx.step.run("total", lambda: ctx.event.data["n"] * 2)
        booked = ctx.step.transaction("book", lambda conn: conn.execute(
            f"INSERT INTO {app.schema}.bookings VALUES (%s) RETURNING n", (total,)).fetchone()[0])
        ctx.step.sleep("settle", "50ms")
        with ctx.rls_bypass("pooler:test"):
            pass
        approved = ctx.step.wait_for_event("approved", event="order/approved", match="data.n",
                                           timeout="30s")
        return {"booked": booked, "approved": approved is not None}


def test_runs_go_through_a_transaction_pooler(
    make_app: Callable[..., Durable], pooler_dsn: str, dsn: str, db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    app = make_app(dsn=pooler_dsn)
    app.migrate()
    assert "reached through a pooler" in caplog.text
    db.execute(f"CREATE TABLE {app.schema}.bookings (n int)")
    through_everything(app)
    app.start(threads=4, poll_interval=0.1)
    assert "does not LISTEN" in caplog.text
    runs = [run_of(app, "order/placed", {"n": n}) for n in range(5)]
    for n, run_id in enumerate(runs):
        wait_for_status(app, run_id, "waiting")
        app.send("order/approved", {"n": n})
        assert app.wait_for_run(run_id, 30).output == {"booked": 2 * n, "approved": True}
    assert sorted(r for (r,) in db.execute(f"SELECT n FROM {app.schema}.bookings")) == [
        0, 2, 4, 6, 8]  # each booked once
    checks = {c.name: c for c in app.doctor()}
    assert checks["pooler"].verdict == "warning"
    with pytest.raises(ConfigurationError, match="listen_dsn"):
        app.prune()
    cancelled = run_of(app, "order/placed", {"n": 99})
    wait_for_status(app, cancelled, "waiting")
    assert app.cancel(cancelled) and app.wait_for_run(cancelled, 20).status == "cancelled"


def test_listen_dsn_wakes_workers_and_prunes_behind_a_pooler(
    make_app: Callable[..., Durable], pooler_dsn: str, dsn: str,
) -> None:
    app, sender = make_app(dsn=pooler_dsn, listen_dsn=dsn), make_app(dsn=pooler_dsn)
    app.migrate()
    for each in (app, sender):
        each.function(id="quick", event="quick")(lambda ctx: "done")
    app.start(threads=1, poll_interval=60)  # a poll would take a minute
    time.sleep(0.3)  # the claimer idles; the deadline below proves the NOTIFY woke it
    run_id = run_of(sender, "quick")  # another process's send: no eager start here
    assert app.wait_for_run(run_id, 10).status == "completed"
    assert app.prune(dry_run=True)["runs"] == 0  # over the direct connection


def test_a_pooler_is_left_no_prepared_statement(
    make_app: Callable[..., Durable], pooler_dsn: str,
) -> None:
    app = make_app(dsn=pooler_dsn)
    app.migrate()
    app.function(id="f", event="e")(lambda ctx: ctx.step.run("s", lambda: 1))
    app.start(threads=2, poll_interval=0.1)
    for _ in range(10):  # past psycopg's threshold for preparing on its own
        app.wait_for_run(run_of(app, "e"), 20)
    with psycopg.connect(pooler_dsn, autocommit=True) as conn:
        for _ in range(20):  # the server connections the pooler hands out in turn
            found = conn.execute("SELECT statement FROM pg_prepared_statements "
                                 "WHERE statement NOT LIKE '%pg_prepared_statements%'").fetchall()
            assert found == [], found
