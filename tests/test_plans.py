"""The hot path's plans: a claim must walk the queue index, not read the backlog.

The queue churns, so its statistics are usually stale; these plans are
pinned in the SQL functions. auto_explain shows the plan used inside them.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from pgdurable import Durable, Event
from pgdurable.testing import internals


def plans_of(conn: psycopg.Connection[Any], action: Any, analyze: bool = False) -> str:
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error:
        pytest.skip("auto_explain cannot be loaded by this role")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute(f"SET auto_explain.log_analyze = {analyze}")
    conn.execute(f"SET auto_explain.log_buffers = {analyze}")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET client_min_messages = log")
    messages: list[str] = []
    conn.add_notice_handler(lambda diag: messages.append(diag.message_primary or ""))
    action()
    conn.execute("RESET client_min_messages")
    return "\n".join(messages)


def test_claim_walks_the_index_instead_of_sorting_the_backlog(app: Durable, dsn: str) -> None:
    app.function(id="f", event="e")(lambda ctx: None)
    for start in range(0, 5000, 1000):
        app.send([Event("e", {"i": i}) for i in range(start, start + 1000)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        plans = plans_of(conn, lambda: internals(app).store.claim_runs(
            conn, "w", ["f"], 10, timedelta(seconds=30)))
    picked = picking(plans)
    assert "Index Scan using queue_available" in picked
    assert "Sort" not in picked, picked


def picking(plans: str) -> str:
    """The plan of the claim's statement that picks the due runs."""
    return next(plan for plan in plans.split("Query Text:") if "FOR UPDATE SKIP LOCKED" in plan)


def test_a_claim_from_its_floor_skips_what_a_held_snapshot_keeps(
    app: Durable, dsn: str, db: psycopg.Connection[Any],
) -> None:
    """While a snapshot is held, the index entries of claimed and finished
    runs cannot be removed, and a claim from the start walks them all; one
    from the floor (where earlier claims left off) does not."""
    app.function(id="f", event="e")(lambda ctx: None)
    store, lease = internals(app).store, timedelta(seconds=30)
    with psycopg.connect(dsn) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")  # takes the snapshot
        app.send([Event("e", {"i": i}) for i in range(2000)])
        app.start(threads=4)
        wait_until(lambda: db.execute(f"SELECT count(*) = 2000 FROM {app.schema}.results")
                   .fetchone() == (True,), what="2,000 runs finished")
        app.stop()
        row = db.execute("SELECT now()").fetchone()
        assert row is not None
        floor = row[0]
        app.send([Event("e", {"late": i}) for i in range(3)])

        def pages(due_from: datetime | None) -> int:
            plans = plans_of(db, lambda: store.claim_runs(db, "w", ["f"], 1, lease, due_from),
                             analyze=True)
            return sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", picking(plans)))

        from_start, from_floor = pages(None), pages(floor)
    assert from_start > 5 * from_floor, (from_start, from_floor)  # here 212 and 19 pages
