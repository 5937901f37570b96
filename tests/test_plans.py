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


@pytest.mark.parametrize(("filters", "index"), [
    # partitions name their copies of an index by its columns
    ({"status": "failed"}, "_status_run_id_idx"),  # results_not_completed
    ({"function": "rare"}, "_function_id_id_idx"),  # runs_function_id
    ({"parent": "PARENT"}, "_parent_run_id_idx"),  # runs_parent
    ({"forked_from": "PARENT"}, "_forked_from_idx"),  # runs_forked_from
    ({"event": "EVENT"}, "_event_ids_idx "),  # runs_first_event
])
def test_a_page_of_runs_walks_the_index_of_its_filter(
    app: Durable, db: psycopg.Connection[Any], dsn: str, filters: dict[str, str], index: str
) -> None:
    """Beside 20,000 completed runs, a page of the few that match reads the
    index of its filter, not every run."""
    s = app.schema
    db.execute(f"INSERT INTO {s}.events (id, name, data, ts) VALUES ('ev', 'e', '{{}}', now())")
    db.execute(f"""
        INSERT INTO {s}.runs (id, function_id, event_ids, parent_run_id, forked_from)
        SELECT {s}.uuid_v7(), CASE WHEN g <= 5 THEN 'rare' ELSE 'common' END,
               ARRAY[CASE WHEN g <= 5 THEN 'ev' ELSE 'other' END],
               CASE WHEN g <= 5 THEN '00000000-0000-7000-8000-000000000001'::uuid END,
               CASE WHEN g <= 5 THEN '00000000-0000-7000-8000-000000000001'::uuid END
        FROM generate_series(1, 20000) g""")
    db.execute(f"""
        INSERT INTO {s}.results (run_id, status, attempt)
        SELECT id, CASE WHEN function_id = 'rare' THEN 'failed' ELSE 'completed' END, 0
        FROM {s}.runs""")
    db.execute(f"ANALYZE {s}.runs, {s}.results")
    value = {"PARENT": "00000000-0000-7000-8000-000000000001", "EVENT": "ev"}
    query = {k: value.get(v, v) for k, v in filters.items()}
    with psycopg.connect(dsn, autocommit=True) as conn:
        store = internals(app).store
        plans = plans_of(conn, lambda: store.execute(conn, store.list_runs({
            "function": None, "status": None, "event": None, "parent": None, "fork_of": None,
            "since": None, "until": None, "after": None, "limit": 3,
            **{("fork_of" if k == "forked_from" else k): v for k, v in query.items()}})))
    assert len(app.list_runs(**query, limit=10)) == 5  # type: ignore[arg-type]
    walk = next(plan for plan in plans.split("Query Text:") if "ORDER BY w.id DESC" in plan)
    assert index in walk, walk
    # only the empty partitions (of tomorrow, and _kept) are read whole
    assert all("cost=0.00..0.00 " in line for line in walk.splitlines() if "Seq Scan" in line), walk
