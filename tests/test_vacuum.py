"""The workers VACUUM the hot tables where autovacuum lags (pgdurable._vacuum).

Autovacuum is turned off on the test's `queue` table (whatever the server
does), so that only pgdurable removes its dead row versions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from pgdurable import Durable, Event
from pgdurable._vacuum import CHECK_EVERY, DEAD_ENOUGH, HotVacuum
from pgdurable.testing import internals


def dead_in_queue(db: psycopg.Connection[Any], schema: str) -> int:
    row = db.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass",
                     (f"{schema}.queue",)).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def churned(app: Durable, db: psycopg.Connection[Any], versions: int) -> Iterator[None]:
    """Leave `versions` dead row versions in the queue (updates of queued
    runs). A snapshot held meanwhile keeps page pruning from removing them
    as they come; it is held until the block ends."""
    db.execute(f"ALTER TABLE {app.schema}.queue SET (autovacuum_enabled = false)")
    app.function(id="f", event="e")(lambda ctx: None)
    app.send([Event("e", {}) for _ in range(1000)])
    with psycopg.connect(db.info.dsn) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")  # takes the snapshot
        for _ in range(versions // 1000):
            db.execute(f"UPDATE {app.schema}.queue SET error = NULL")
        wait_until(lambda: dead_in_queue(db, app.schema) >= versions, what="the statistics")
        yield


def churn(app: Durable, db: psycopg.Connection[Any], versions: int) -> None:
    """Leave `versions` dead row versions in the queue, that VACUUM may remove."""
    with churned(app, db, versions):
        pass


def test_a_queue_full_of_dead_row_versions_is_vacuumed(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    churn(app, db, DEAD_ENOUGH + 1000)
    vacuum = HotVacuum(internals(app).store)
    with internals(app).pool.connection() as conn:
        removed = vacuum(conn)
        assert removed["queue"] >= DEAD_ENOUGH
        assert vacuum(conn) == {}  # checked again only CHECK_EVERY later
    assert dead_in_queue(db, app.schema) < 1000


def test_a_few_dead_row_versions_are_left_to_autovacuum(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    churn(app, db, DEAD_ENOUGH // 2)
    with internals(app).pool.connection() as conn:
        assert HotVacuum(internals(app).store)(conn) == {}
    assert dead_in_queue(db, app.schema) >= DEAD_ENOUGH // 2


def test_a_snapshot_held_elsewhere_is_named_and_vacuum_backs_off(
    app: Durable, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgdurable.worker")
    vacuum = HotVacuum(internals(app).store)
    with churned(app, db, DEAD_ENOUGH + 1000), internals(app).pool.connection() as conn:
        assert vacuum(conn)["queue"] < DEAD_ENOUGH  # it could remove next to nothing
        [first] = [r for r in caplog.records if "holds back vacuum" in r.message]
        assert first.levelno == logging.INFO  # once may be a passing query
        assert vacuum._pause == 2 * CHECK_EVERY
        vacuum._next = float("-inf")  # as if the pause were over
        vacuum(conn)
        [_, second] = [r for r in caplog.records if "holds back vacuum" in r.message]
        assert second.levelno == logging.WARNING
        assert vacuum._pause == 4 * CHECK_EVERY


def test_a_worker_vacuums_the_queue_by_itself(
    app: Durable, db: psycopg.Connection[Any], make_app: Any
) -> None:
    churn(app, db, DEAD_ENOUGH + 1000)
    worker = make_app()  # of another function: the queued runs stay as they are
    worker.function(id="g", event="g")(lambda ctx: None)
    worker.start(threads=1)
    wait_until(lambda: dead_in_queue(db, app.schema) < 1000, what="the worker's VACUUM")


def test_a_role_that_does_not_own_the_queue_does_not_try(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    churn(app, db, DEAD_ENOUGH + 1000)
    role = f"{app.schema}_reader"
    db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        db.execute(f"GRANT USAGE ON SCHEMA {app.schema} TO {role}")
        db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {app.schema} TO {role}")
        with psycopg.connect(db.info.dsn, user=role, autocommit=True) as conn:
            assert HotVacuum(internals(app).store)(conn) == {}  # it would only be warned
        assert dead_in_queue(db, app.schema) >= DEAD_ENOUGH
    finally:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")
