"""Flow control across worker processes: concurrency=, throttle= and priority=
(enforced when workers claim runs), and idempotency= and debounce= (decided
when events are sent).

The proofs record when every step executed (a `spans` table, written from
inside the steps) and check the limits on those records: the maximum
overlap of steps per key, the number of run starts in any window.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest import send_from_threads, status_of, wait_until

from pgdurable import (
    Concurrency,
    Context,
    Debounce,
    Durable,
    Event,
    InvalidEventError,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from pgdurable._records import Finish
from pgdurable.testing import internals

FLOW = {"PGDURABLE_TEST_FLOW": "1"}


@pytest.fixture
def spans(app: Durable, db: psycopg.Connection[Any]) -> Durable:
    db.execute(f"CREATE TABLE {app.schema}.spans "
               "(run_id uuid, key text, started timestamptz, ended timestamptz)")
    db.execute(f"CREATE TABLE {app.schema}.effects (run_id uuid, what text)")
    db.execute(f"CREATE TABLE {app.schema}.flags (name text)")
    return app


def record(app: Durable, run_id: str, key: str, hold: threading.Event | None = None) -> None:
    """In-process twin of procapp.span: a step's start and end, in `spans`."""
    with app.connection() as conn:
        conn.execute(f"INSERT INTO {app.schema}.spans VALUES (%s, %s, clock_timestamp(), null)",
                     (run_id, key))
    if hold is not None:
        hold.wait(30)
    with app.connection() as conn:
        conn.execute(f"UPDATE {app.schema}.spans SET ended = clock_timestamp() "
                     "WHERE run_id = %s AND ended IS NULL", (run_id,))


def max_overlap(db: psycopg.Connection[Any], schema: str, *, per_key: bool = False) -> int:
    """The most steps that executed at once (per key: the most for any one key)."""
    partition = "PARTITION BY key" if per_key else ""
    row = db.execute(f"""
        SELECT coalesce(max(n), 0) FROM (
            SELECT sum(d) OVER ({partition} ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS n
            FROM (SELECT key, started AS t, 1 AS d FROM {schema}.spans WHERE ended IS NOT NULL
                  UNION ALL
                  SELECT key, ended, -1 FROM {schema}.spans WHERE ended IS NOT NULL) x) y
    """).fetchone()
    assert row is not None
    return int(row[0])


def finished(app: Durable, function: str, count: int, timeout: float = 120) -> None:
    def done() -> bool:
        runs = app.list_runs(function=function, limit=count + 1)
        return len(runs) == count and all(r.is_terminal for r in runs)

    wait_until(done, timeout=timeout, what=f"{count} runs of {function} to finish")
    statuses = {r.status for r in app.list_runs(function=function, limit=count)}
    assert statuses == {"completed"}


# -- concurrency ----------------------------------------------------------


def test_three_processes_never_exceed_a_global_and_a_per_key_limit(
    spans: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = spans
    app.function(id="limited", event="test/limited",
                 concurrency=[Concurrency(limit=3), Concurrency(limit=1, key="data.user")])(
        lambda ctx: None)
    for _ in range(3):
        worker_process(threads=4, **FLOW)
    app.send([Event("test/limited", {"user": n % 5}) for n in range(150)])
    finished(app, "limited", 150)
    assert db.execute(f"SELECT count(*) FROM {app.schema}.spans").fetchone() == (150,)
    assert max_overlap(db, app.schema) == 3  # reached, never passed
    assert max_overlap(db, app.schema, per_key=True) == 1
    assert db.execute(f"SELECT count(*) FROM {app.schema}.slots").fetchone() == (0,)


def test_over_the_limit_runs_wait_in_order_and_priority_goes_first(
    spans: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = spans
    app.function(id="ordered", event="test/ordered", concurrency=Concurrency(limit=1),
                 priority=Priority(run="data.priority"))(lambda ctx: None)
    sent = [app.send("test/ordered", {"n": n, "priority": 0})[0] for n in range(10)]
    urgent = [app.send("test/ordered", {"n": n, "priority": 60})[0] for n in range(10, 14)]
    for _ in range(3):
        worker_process(threads=4, **FLOW)
    finished(app, "ordered", 14)
    started = db.execute(f"""
        SELECT r.event_ids[1] FROM {app.schema}.spans s JOIN {app.schema}.runs r ON r.id = s.run_id
        ORDER BY s.started""").fetchall()
    assert [e for (e,) in started] == urgent + sent
    assert max_overlap(db, app.schema) == 1


def test_a_killed_worker_s_slot_comes_back_when_its_lease_expires(
    spans: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = spans
    app.function(id="hog", event="test/hog", concurrency=Concurrency(limit=1))(lambda ctx: None)
    [first] = app.runs_for_event(app.send("test/hog", {"n": 0})[0])
    doomed = worker_process(threads=2, **FLOW)
    wait_until(lambda: db.execute(f"SELECT count(*) FROM {app.schema}.flags").fetchone() == (1,),
               what="the first run to hold its slot")
    app.send([Event("test/hog", {"n": n}) for n in (1, 2)])
    doomed.kill()
    worker_process(threads=2, **FLOW)
    finished(app, "hog", 3)
    assert db.execute(f"SELECT count(*) FROM {app.schema}.effects WHERE run_id = %s",
                      (first.id,)).fetchone() == (2,)  # its step ran again, under the same slot
    assert max_overlap(db, app.schema) == 1
    assert db.execute(f"SELECT count(*) FROM {app.schema}.slots").fetchone() == (0,)


def test_a_run_holds_no_slot_while_it_sleeps(spans: Durable, db: psycopg.Connection[Any]) -> None:
    app = spans

    @app.function(id="napper", event="nap", concurrency=Concurrency(limit=1))
    def napper(ctx: Context) -> None:
        ctx.step.run("before", record, app, ctx.run_id, "before")
        ctx.step.sleep("nap", "2s")
        ctx.step.run("after", record, app, ctx.run_id, "after")

    app.send([Event("nap", {}) for _ in range(3)])
    app.start(threads=4)
    finished(app, "napper", 3)
    # Had the first run kept its slot while asleep, the second could not
    # have started before the first's last step.
    steps = [k for (k,) in db.execute(
        f"SELECT key FROM {app.schema}.spans ORDER BY started").fetchall()]
    assert steps == ["before"] * 3 + ["after"] * 3
    assert max_overlap(db, app.schema) == 1


def test_a_flood_of_one_key_does_not_starve_another(app: Durable) -> None:
    release = threading.Event()

    @app.function(id="per-user", event="job", concurrency=Concurrency(limit=2, key="data.user"))
    def per_user(ctx: Context) -> str:
        if ctx.event.data["user"] == "flood":
            release.wait(30)
        return str(ctx.event.data["user"])

    app.send([Event("job", {"user": "flood"}) for _ in range(100)])
    [other] = app.runs_for_event(app.send("job", {"user": "other"})[0])
    app.start(threads=4)
    assert app.wait_for_run(other.id, 30).status == "completed"
    assert len(app.list_runs(function="per-user", status="completed", limit=400)) == 1
    release.set()


def test_app_scope_shares_a_limit_between_functions(
    spans: Durable, db: psycopg.Connection[Any]
) -> None:
    app = spans
    shared = Concurrency(limit=1, key="data.account", scope="app")
    for fid in ("export", "import"):
        app.function(id=fid, event="sync", concurrency=shared)(
            lambda ctx: ctx.step.run("work", record, app, ctx.run_id, str(ctx.event.data["account"])))
    app.send([Event("sync", {"account": n % 2}) for n in range(10)])
    app.start(threads=6)
    finished(app, "export", 10)
    finished(app, "import", 10)
    assert max_overlap(db, app.schema, per_key=True) == 1


def test_a_cancelled_run_passes_on_the_slot_handed_to_it(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    app.function(id="single", event="go", concurrency=Concurrency(limit=1))(lambda ctx: None)
    runs = [app.runs_for_event(app.send("go", {"n": n})[0])[0].id for n in range(3)]
    lease = timedelta(seconds=30)
    with app.connection() as conn:
        [first] = internals(app).store.claim_runs(conn, "w", ["single"], 10, lease)  # the others block
    assert first.id == runs[0]
    with app.connection() as conn:  # it ends: its slot is handed to the second
        internals(app).store.flush(conn, [], [Finish(first.id, first.token, "completed", "null")])
    assert app.cancel(runs[1])  # which passes it on to the third
    with app.connection() as conn:
        assert [r.id for r in internals(app).store.claim_runs(conn, "w", ["single"], 10, lease)] == [runs[2]]
    assert db.execute(f"SELECT used, reserved FROM {app.schema}.slots").fetchall() == [(1, 0)]


def test_a_run_handed_a_slot_after_the_claim_floor_passed_it_still_starts(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """A run handed a concurrency slot keeps the due time it was sent with,
    which a worker's claims may have left behind long ago (DueFloor): a
    claim from the start, which the worker still makes, finds it."""
    release = threading.Event()

    @app.function(id="single", event="go", concurrency=Concurrency(limit=1))
    def single(ctx: Context) -> None:
        if ctx.event.data["n"] == 0:
            release.wait(30)

    app.function(id="other", event="other")(lambda ctx: None)
    first, second = (app.runs_for_event(app.send("go", {"n": n})[0])[0].id for n in range(2))
    app.start(threads=2)
    wait_until(lambda: status_of(app, first) == "running", what="the first run to hold the slot")
    wait_until(lambda: db.execute(  # the floor's margin behind the second run's due time
        f"SELECT now() > available_at + interval '1.5 s' FROM {app.schema}.queue WHERE run_id = %s",
        (second,)).fetchone() == (True,), what="time to pass")
    later = app.send([Event("other", {}) for _ in range(20)])
    for event_id in later:  # claimed from a floor past the second run's due time
        assert app.wait_for_run(app.runs_for_event(event_id)[0].id, 20).status == "completed"
    release.set()
    assert app.wait_for_run(second, 20).status == "completed"


def test_send_time_limits_hold_with_three_processes_and_three_senders(
    spans: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = spans
    app.function(id="solo", event="test/solo", singleton=Singleton(key="data.k"),
                 rate_limit=RateLimit(limit=4, period="1h", key="data.k"))(lambda ctx: None)
    for _ in range(3):
        worker_process(threads=4, **FLOW)

    send_from_threads(3, lambda _: [app.send("test/solo", {"k": n % 3}) for n in range(20)])
    wait_until(lambda: all(r.is_terminal for r in app.list_runs(function="solo", limit=100)),
               what="every run to finish or be skipped")
    runs = app.list_runs(function="solo", limit=100)
    assert len(runs) == 60  # none lost: each event has its run, run or skipped
    ran = db.execute(f"SELECT key, count(*) FROM {app.schema}.spans GROUP BY key").fetchall()
    assert all(1 <= n <= 4 for _, n in ran) and len(ran) == 3  # the rate limit, per key
    assert max_overlap(db, app.schema, per_key=True) == 1  # the singleton, per key
    skipped = [r for r in runs if r.status == "skipped"]
    assert len(skipped) == 60 - sum(n for _, n in ran)
    assert {r.error.type for r in skipped} <= {"RateLimited", "SingletonRunning"}  # type: ignore[union-attr]


# -- throttle ---------------------------------------------------------------


def test_three_processes_start_throttled_runs_no_faster_than_the_limit(
    spans: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = spans
    app.function(id="throttled", event="test/throttled",
                 throttle=Throttle(limit=5, period="1s", burst=2))(lambda ctx: None)
    for _ in range(3):
        worker_process(threads=4, **FLOW)
    app.send([Event("test/throttled", {}) for _ in range(16)])
    finished(app, "throttled", 16)
    starts = [s for (s,) in db.execute(
        f"SELECT started_at FROM {app.schema}.results ORDER BY started_at").fetchall()]
    # GCRA: 2 at once, then one every 200 ms: 14 more take 2.8 s...
    assert starts[-1] - starts[0] >= timedelta(seconds=2.8 - 0.05)
    # ...and any 1 s window holds at most limit + burst - 1 starts.
    assert max(sum(1 for t in starts if s <= t < s + timedelta(seconds=1)) for s in starts) == 6


def test_throttle_is_per_key_and_drops_nothing(app: Durable) -> None:
    @app.function(id="per-key", event="t",
                  throttle=Throttle(limit=1, period="1h", key="data.k"))
    def per_key(ctx: Context) -> int:
        return int(ctx.event.data["k"])

    app.send([Event("t", {"k": k}) for k in (1, 2, 3, 1)])
    app.start(threads=2)
    wait_until(lambda: len(app.list_runs(function="per-key", status="completed")) == 3,
               what="one run per key")
    queued = app.list_runs(function="per-key", status="queued")
    assert len(queued) == 1  # the second of key 1: waits its turn, an hour on
    assert app.get_run(queued[0].id) is not None


def test_throttle_holds_when_runs_also_wait_for_a_concurrency_slot(
    spans: Durable, db: psycopg.Connection[Any]
) -> None:
    """Issue 22, s8: runs blocked on a full key must not start back to back
    once the slot frees: each still waits its throttle turn."""
    app, hold = spans, threading.Event()

    @app.function(id="both", event="b", throttle=Throttle(limit=1, period="1s"),
                  concurrency=Concurrency(limit=1))
    def both(ctx: Context) -> None:
        record(app, ctx.run_id, "", hold if ctx.event.data["first"] else None)

    app.start(threads=4)
    app.send("b", {"first": True})
    wait_until(lambda: db.execute(f"SELECT count(*) FROM {app.schema}.spans").fetchone() == (1,),
               what="the first run to start")
    app.send([Event("b", {"first": False}) for _ in range(3)])
    # Their throttle turns (1 s apart) all pass while they are blocked.
    wait_until(lambda: db.execute(f"SELECT count(*) FROM {app.schema}.queue "
                                  "WHERE blocked_key IS NOT NULL").fetchone() == (3,),
               what="the three runs to block on the slot")
    time.sleep(3.5)  # the scenario itself: a first run that holds its slot long
    hold.set()
    finished(app, "both", 4)
    gaps = db.execute(f"SELECT extract(epoch FROM started - lag(started) OVER (ORDER BY started)) "
                      f"FROM {app.schema}.spans ORDER BY started").fetchall()[1:]
    assert all(gap >= 0.95 for (gap,) in gaps), gaps


# -- priority ----------------------------------------------------------------


def test_priority_moves_a_run_ahead_of_runs_queued_before_it(app: Durable) -> None:
    order: list[str] = []

    @app.function(id="prioritised", event="p", priority=Priority(run=lambda e: e.data["p"]))
    def prioritised(ctx: Context) -> None:
        order.append(ctx.event.data["name"])

    for name, p in (("a", 0), ("b", 0), ("c", 30), ("d", -600), ("e", 10_000)):
        app.send("p", {"name": name, "p": p})
    app.start(threads=1, prefetch=1)
    wait_until(lambda: len(order) == 4, what="four runs")
    assert order == ["e", "c", "a", "b"]  # 10,000 s counts as the maximum, 600 s
    [held_back] = app.list_runs(function="prioritised", status="queued")
    assert held_back.status == "queued"  # "d" waits 10 minutes


# -- validation ----------------------------------------------------------------


def test_a_missing_key_or_a_priority_that_is_not_a_number_fails_the_send(app: Durable) -> None:
    app.function(id="keyed", event="k", concurrency=Concurrency(1, key="data.user"))(
        lambda ctx: None)
    app.function(id="ranked", event="r", priority=Priority(run="data.p"))(lambda ctx: None)
    with pytest.raises(InvalidEventError, match=r"no value at 'data\.user'"):
        app.send("k", {"other": 1})
    with pytest.raises(InvalidEventError, match="'high' is not a number of seconds"):
        app.send("r", {"p": "high"})
    assert app.list_runs() == []


# -- send-time options, decided across processes ---------------------------------


def test_idempotency_starts_one_run_per_key_with_three_processes_and_three_senders(
    spans: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = spans
    app.function(id="once", event="test/once", idempotency="data.order")(lambda ctx: None)
    for _ in range(3):
        worker_process(threads=4, **FLOW)
    send_from_threads(3, lambda _: [app.send("test/once", {"order": n})
                                    for _ in range(3) for n in range(10)])
    finished(app, "once", 10)
    assert sorted(r.output for r in app.list_runs(function="once")) == list(range(10))
    keys = db.execute(f"SELECT key, count(*) FROM {app.schema}.spans GROUP BY key").fetchall()
    assert sorted(keys) == [(str(n), 1) for n in range(10)]  # each order's step ran once
    assert db.execute(f"SELECT count(*) FROM {app.schema}.events").fetchone() == (90,)


def test_debounce_starts_one_run_per_key_with_its_last_event_across_three_processes(
    spans: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = spans
    app.function(id="settled", event="test/settled", debounce=Debounce("2s", key="data.k"))(
        lambda ctx: None)
    for _ in range(3):
        worker_process(threads=4, **FLOW)
    # Three senders, one key each, ten events apiece; keys interleave.
    send_from_threads(3, lambda k: [app.send("test/settled", {"k": k, "n": n}) for n in range(10)])
    finished(app, "settled", 3)
    assert sorted(r.output for r in app.list_runs(function="settled")) == [9, 9, 9]
    keys = db.execute(f"SELECT key, count(*) FROM {app.schema}.spans GROUP BY key").fetchall()
    assert sorted(keys) == [("0", 1), ("1", 1), ("2", 1)]  # one run each, one start each
    late = db.execute(f"""
        SELECT bool_and(s.started >= e.received_at + interval '2s') FROM {app.schema}.spans s
        JOIN {app.schema}.runs r ON r.id = s.run_id
        JOIN {app.schema}.events e ON e.id = r.event_ids[1]""").fetchone()
    assert late == (True,)  # each started a period after its key's last event
