"""The hot path's plans: a claim must walk the queue index, not read the backlog.

The queue churns, so its statistics are usually stale; these plans are
pinned in the SQL functions. auto_explain shows the plan used inside them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgdurable import Durable, Event
from pgdurable.testing import internals


def plans_of(conn: psycopg.Connection[Any], action: Any) -> str:
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error:
        pytest.skip("auto_explain cannot be loaded by this role")
    conn.execute("SET auto_explain.log_min_duration = 0")
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
    picked = next(plan for plan in plans.split("Query Text:") if "FOR UPDATE SKIP LOCKED" in plan)
    assert "Index Scan using queue_available" in picked
    assert "Sort" not in picked, picked
