"""ctx.step.transaction: a step whose database writes commit with its journal entry."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_until

from pgdurable import Context, Durable, Event
from pgdurable.testing import internals


@pytest.fixture
def ledger(app: Durable, db: psycopg.Connection[Any]) -> Durable:
    db.execute(f"CREATE TABLE {app.schema}.ledger (run_id uuid, amount int)")
    return app


def book(app: Durable, run_id: str, amount: int) -> Any:
    """A transactional step's function: one ledger row."""

    def write(conn: psycopg.Connection[Any]) -> int:
        conn.execute(f"INSERT INTO {app.schema}.ledger VALUES (%s, %s)", (run_id, amount))
        return amount

    return write


def ledger_rows(db: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    return db.execute(f"SELECT run_id::text, amount FROM {schema}.ledger").fetchall()


def test_its_writes_commit_once_and_replay_returns_the_journaled_value(
    ledger: Durable, db: psycopg.Connection[Any]
) -> None:
    app, writes, returns = ledger, [], []

    @app.function(id="pay", event="pay", retries=3)
    def pay(ctx: Context) -> int:
        def write(conn: psycopg.Connection[Any]) -> int:
            writes.append(book(app, ctx.run_id, 5)(conn))
            if len(writes) == 1:
                raise RuntimeError("fails after writing: the write is rolled back")
            return 5

        returns.append(ctx.step.transaction("book", write))
        if len(returns) == 1:
            raise RuntimeError("fails outside any step: the handler runs again from the top")
        return int(returns[-1])

    run_id = run_of(app, "pay")
    app.start(threads=2)
    done = app.wait_for_run(run_id, 30)
    assert (done.status, done.output) == ("completed", 5)
    assert (writes, returns) == ([5, 5], [5, 5])  # the replay did not write a third time
    assert ledger_rows(db, app.schema) == [(run_id, 5)]
    journal = db.execute(f"SELECT output, attempts FROM {app.schema}.steps "
                         "WHERE run_id = %s AND step_key = 'book'", (run_id,)).fetchone()
    assert journal == (5, 2)


def test_a_value_that_does_not_serialize_rolls_its_writes_back(
    ledger: Durable, db: psycopg.Connection[Any]
) -> None:
    app = ledger

    @app.function(id="bad-value", event="bad")
    def bad_value(ctx: Context) -> None:
        def write(conn: psycopg.Connection[Any]) -> object:
            book(app, ctx.run_id, 1)(conn)
            return object()

        ctx.step.transaction("book", write)

    run_id = run_of(app, "bad")
    app.start(threads=1)
    done = app.wait_for_run(run_id, 30)
    assert done.status == "failed" and done.error is not None
    assert done.error.type == "StepError" and "SerializationError" in done.error.message
    assert ledger_rows(db, app.schema) == []


def test_async_handlers_run_it_in_a_thread(ledger: Durable, db: psycopg.Connection[Any]) -> None:
    app = ledger

    @app.function(id="async-pay", event="apay")
    async def async_pay(ctx: Context) -> int:
        booked: int = await ctx.step.transaction("book", book(app, ctx.run_id, 7))
        return booked

    run_id = run_of(app, "apay")
    app.start(threads=1)
    assert app.wait_for_run(run_id, 30).output == 7
    assert ledger_rows(db, app.schema) == [(run_id, 7)]


def test_a_held_run_is_not_taken_over_and_its_lease_goes_on(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    app.function(id="held", event="h")(lambda ctx: None)
    run_id = run_of(app, "h")
    with app.connection() as conn:
        [claimed] = internals(app).store.claim_runs(conn, "w1", ["held"], 1, timedelta(milliseconds=1))
    with app.connection() as step_conn:  # a transactional step's transaction
        assert internals(app).store.hold_run(step_conn, run_id, claimed.token) is False  # held, no cancel
        with app.connection() as other:  # lease expired, yet no one else takes the run
            assert internals(app).store.claim_runs(other, "w2", ["held"], 1, timedelta(seconds=30)) == []
        with app.connection() as other:  # and its own worker's heartbeat extends it
            internals(app).store.heartbeat(other, [(run_id, claimed.token)], timedelta(seconds=30))
    assert db.execute(f"SELECT available_at > now() + interval '20s' FROM {app.schema}.queue "
                      "WHERE run_id = %s", (run_id,)).fetchone() == (True,)
    with app.connection() as conn:  # a claim that lost the run gets no hold
        assert internals(app).store.hold_run(conn, run_id, claimed.token + 1) is None


def test_exactly_once_over_1000_runs_with_workers_killed_at_random(
    app: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    db.execute(f"CREATE TABLE {app.schema}.effects (run_id uuid, what text)")
    app.function(id="exactly-once", event="test/exactly-once")(lambda ctx: None)
    app.send([Event("test/exactly-once", {"n": n}) for n in range(1000)])
    pick = random.Random(5)
    workers = [worker_process(threads=4) for _ in range(2)]
    kills, deadline = 0, time.monotonic() + 300

    def completed() -> int:
        row = db.execute(f"SELECT count(*) FROM {app.schema}.results "
                         "WHERE status = 'completed'").fetchone()
        return int(row[0]) if row else 0

    while completed() < 1000 and time.monotonic() < deadline:
        time.sleep(pick.uniform(0.3, 1.2))  # the random point: wherever the workers are
        if kills < 12 and completed() < 1000:
            victim = workers.pop(pick.randrange(len(workers)))
            victim.kill()
            kills += 1
            workers.append(worker_process(threads=4))
    wait_until(lambda: completed() == 1000, timeout=120, what="1000 runs to complete")
    assert kills >= 3  # the runs did not all finish before the first kill
    booked = db.execute(f"SELECT count(*), count(DISTINCT run_id) FROM {app.schema}.effects "
                        "WHERE what = 'booked'").fetchone()
    assert booked == (1000, 1000)  # every run's row, each exactly once
    outputs = db.execute(f"SELECT sum(output::int) FROM {app.schema}.results").fetchone()
    assert outputs == (sum(range(1000)),)
