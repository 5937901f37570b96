from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_until

from pgdurable import ConfigurationError, Context, Durable, DurableError, Event
from pgdurable.testing import internals


def test_get_run_unknown_and_invalid_ids(app: Durable) -> None:
    assert app.get_run(str(uuid.uuid4())) is None
    with pytest.raises(ConfigurationError, match="not a run id"):
        app.get_run("nope")
    with pytest.raises(DurableError, match="no run"):
        app.wait_for_run(str(uuid.uuid4()), timeout=1)


def test_wait_for_run_times_out(app: Durable) -> None:
    @app.function(id="never-started", event="e")
    def never(ctx: Context) -> None: ...

    run_id = run_of(app, "e")
    with pytest.raises(TimeoutError, match="still queued"):
        app.wait_for_run(run_id, timeout=0.2)


def test_list_runs_filters(app: Durable) -> None:
    @app.function(id="a", event="e")
    def a(ctx: Context) -> None: ...

    @app.function(id="b", event="e")
    def b(ctx: Context) -> None: ...

    for _ in range(3):
        app.send("e", {})
    assert len(app.list_runs()) == 6
    assert {r.function_id for r in app.list_runs(function="a")} == {"a"}
    assert len(app.list_runs(function="a", limit=2)) == 2
    assert len(app.list_runs(status="queued")) == 6
    assert app.list_runs(status="completed") == []


def test_list_runs_pages_newest_first(app: Durable) -> None:
    app.function(id="a", event="e")(lambda ctx: None)
    sent = [run_of(app, "e", {"n": n}) for n in range(7)]
    pages, after = [], None
    while page := app.list_runs(limit=3, after=after):
        pages.append([r.id for r in page])
        after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [run for p in pages for run in p] == sent[::-1]


def test_list_runs_by_event_and_time(app: Durable, db: psycopg.Connection[Any]) -> None:
    app.function(id="a", event="first")(lambda ctx: None)
    app.function(id="b", event="second")(lambda ctx: None)
    early = [run_of(app, "first") for _ in range(2)]
    row = db.execute("SELECT clock_timestamp()").fetchone()  # the clock run ids are made on
    assert row is not None
    [second_event] = app.send("second", {})
    [late] = app.runs_for_event(second_event)
    assert {r.id for r in app.list_runs(event="first")} == set(early)  # by name
    assert [r.id for r in app.list_runs(event=second_event)] == [late.id]  # by id
    assert app.list_runs(event="nothing") == []
    assert {r.id for r in app.list_runs(until=row[0])} == set(early)
    assert [r.id for r in app.list_runs(since=row[0])] == [late.id]
    assert [r.id for r in app.list_runs(since=row[0], function="a")] == []


@pytest.mark.parametrize(("option", "value", "message"), [
    ("status", "done", "status 'done' is not one of queued"),
    ("after", "nope", "not a run id"),
    ("since", datetime(2026, 1, 1), "since"),
    ("limit", 0, "limit must be a positive int"),
])
def test_list_runs_refuses_bad_filters(app: Durable, option: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.list_runs(**{option: value})


def test_list_events_pages_newest_first_by_name(app: Durable) -> None:
    ids = [app.send("a" if n % 2 else "b", {"n": n})[0] for n in range(6)]
    assert [e.id for e in app.list_events()] == ids[::-1]
    pages, after = [], None
    while page := app.list_events(name="a", limit=2, after=after):
        pages.append([e.id for e in page])
        after = page[-1].id
    assert pages == [[ids[5], ids[3]], [ids[1]]]
    [newest] = app.list_events(limit=1)
    assert newest.name == "a" and newest.data == {"n": 5}


def test_cancel_a_queued_run(app: Durable) -> None:
    @app.function(id="cancel-me", event="e")
    def cancel_me(ctx: Context) -> str:
        return "ran"

    run_id = run_of(app, "e")
    assert app.cancel(run_id) is True
    assert app.cancel(run_id) is False  # already finished
    app.start(threads=1, poll_interval=0.1)
    other = run_of(app, "e")
    assert app.wait_for_run(other, 20).status == "completed"
    run = app.get_run(run_id)
    assert run is not None and run.status == "cancelled"
    assert run.error is not None and run.error.type == "Cancelled"


def test_cancel_a_running_run_at_the_next_step_boundary(app: Durable) -> None:
    in_step, release = threading.Event(), threading.Event()
    calls: Counter[str] = Counter()

    def block() -> str:
        calls["first"] += 1
        in_step.set()
        release.wait(30)
        return "first done"

    @app.function(id="long", event="long")
    def long(ctx: Context) -> str:
        ctx.step.run("first", block)
        ctx.step.run("second", lambda: calls.update(["second"]))
        return "finished"

    run_id = run_of(app, "long")
    app.start(threads=1, poll_interval=0.1)
    assert in_step.wait(20)
    assert app.cancel(run_id) is True
    release.set()
    run = app.wait_for_run(run_id, 20)
    assert run.status == "cancelled"
    assert calls == {"first": 1}


def test_replay_starts_a_new_run_of_the_same_event(app: Durable) -> None:
    seen: list[Any] = []

    @app.function(id="replayable", event="r")
    def replayable(ctx: Context) -> Any:
        seen.append(ctx.event.data)
        return ctx.event.data["n"]

    run_id = run_of(app, "r", {"n": 41})
    app.start(threads=1, poll_interval=0.1)
    first = app.wait_for_run(run_id, 20)
    second = app.wait_for_run(app.replay(run_id), 20)
    assert second.id != first.id
    assert second.event_ids == first.event_ids
    assert (first.output, second.output) == (41, 41)
    assert seen == [{"n": 41}, {"n": 41}]
    with pytest.raises(DurableError, match="no run"):
        app.replay(str(uuid.uuid4()))


def test_notify_wakes_an_idle_worker_without_polling(app: Durable, make_app: Any) -> None:
    @app.function(id="quick", event="quick")
    def quick(ctx: Context) -> str:
        return "done"

    app.start(threads=1, poll_interval=60)  # a poll would take 30-60 s
    time.sleep(0.2)  # let the claimer go idle; the deadline below proves the wake-up
    sender = make_app()  # as another process: no worker of its own to start the run
    sender.function(id="quick", event="quick")(quick)
    run_id = run_of(sender, "quick")
    assert app.wait_for_run(run_id, timeout=10).status == "completed"


def test_stop_drains_running_handlers(app: Durable) -> None:
    started = threading.Event()

    @app.function(id="drain", event="drain")
    def drain(ctx: Context) -> str:
        started.set()
        time.sleep(0.5)  # the work being drained
        return "finished"

    run_id = run_of(app, "drain")
    app.start(threads=1, poll_interval=0.1)
    assert started.wait(20)
    app.stop(timeout=20)
    run = app.get_run(run_id)  # the stopped app reopens a pool on demand
    assert run is not None and run.status == "completed"


def test_a_lost_lease_is_claimed_again_and_the_stale_worker_changes_nothing(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    # The first worker's heartbeat (every lease / 3) must not renew the lease
    # the test expires by hand, as if that worker had died.
    first, second = make_app(lease="600s"), make_app(lease="30s")
    first.migrate()
    entered, release = threading.Event(), threading.Event()
    outputs: list[str] = []

    for app, name in ((first, "stale"), (second, "fresh")):
        @app.function(id="hang", event="hang")
        def hang(ctx: Context, name: str = name) -> str:
            if name == "stale":
                entered.set()
                release.wait(30)  # hangs past its lease
            outputs.append(name)
            return ctx.step.run("work", lambda: name)

    run_id = run_of(first, "hang")
    first.start(threads=1, poll_interval=0.1)
    assert entered.wait(20)
    # The lease expires as if the first worker had died.
    db.execute(f"UPDATE {first.schema}.queue SET available_at = now() WHERE run_id = %s", (run_id,))
    second.start(threads=1, poll_interval=0.1)
    assert second.wait_for_run(run_id, 20).output == "fresh"
    release.set()
    wait_until(lambda: outputs.count("stale") == 1, what="the stale handler to return")
    first.stop(timeout=10)
    run = second.get_run(run_id)
    assert run is not None and (run.status, run.output) == ("completed", "fresh")
    steps = db.execute(f"SELECT output FROM {first.schema}.steps WHERE run_id = %s", (run_id,))
    assert steps.fetchall() == [("fresh",)]


def test_worker_recovers_from_lost_connections(make_app: Any, dsn: str, db: psycopg.Connection[Any]) -> None:
    tag = f"pgdurable-{uuid.uuid4().hex[:8]}"
    app = make_app(dsn=f"{dsn}?application_name={tag}")
    app.migrate()

    @app.function(id="survivor", event="s")
    def survivor(ctx: Context) -> int:
        return int(ctx.step.run("double", lambda: ctx.event.data["n"] * 2))

    app.start(threads=2, poll_interval=0.2)
    assert app.wait_for_run(run_of(app, "s", {"n": 1}), 20).output == 2
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (tag,)).fetchone()
    assert killed is not None and killed[0] >= 1
    # Sending goes through the pool too; it may see a dead connection once.
    wait_until(lambda: _try_send(app), what="sending to work again")
    runs = app.list_runs(function="survivor", limit=10)
    for run in runs:
        assert app.wait_for_run(run.id, 30).status == "completed"
    assert len(runs) >= 2


def _try_send(app: Durable) -> bool:
    try:
        app.send("s", {"n": 5})
        return True
    except psycopg.OperationalError:
        return False


def test_start_twice_and_bad_thread_counts(app: Durable) -> None:
    with pytest.raises(ConfigurationError, match="threads"):
        app.start(threads=0)
    app.start(threads=1)
    with pytest.raises(DurableError, match="already started"):
        app.start(threads=1)


def test_monitoring_views(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="ok", event="v")
    def ok(ctx: Context) -> int:
        return int(ctx.step.run("one", lambda: 1))

    @app.function(id="bad", event="v", retries=0)
    def bad(ctx: Context) -> None:
        raise ValueError("broken on purpose")

    @app.function(id="idle", event="idle")
    def idle(ctx: Context) -> None: ...

    [event_id] = app.send("v", {})
    app.send("idle", {})
    internals(app).functions.pop("idle")  # this worker does not run `idle`: it stays queued
    app.start(threads=2, poll_interval=0.1)
    for run in app.runs_for_event(event_id):
        app.wait_for_run(run.id, 20)
    status = dict(((f, s), n) for f, s, n in db.execute(
        f"SELECT function_id, status, runs FROM {app.schema}.function_status"))
    assert status == {("ok", "completed"): 1, ("bad", "failed"): 1, ("idle", "queued"): 1}
    failure = db.execute(
        f"SELECT function_id, error_type, error_message FROM {app.schema}.recent_failures").fetchall()
    assert failure == [("bad", "ValueError", "broken on purpose")]
    depth = db.execute(
        f"SELECT function_id, queued, ready, oldest_ready_age > interval '0' "
        f"FROM {app.schema}.queue_depth").fetchall()
    assert depth == [("idle", 1, 1, True)]
    steps = db.execute(f"SELECT function_id, step_key, status FROM {app.schema}.step_timeline").fetchall()
    assert steps == [("ok", "one", "completed")]


def test_a_callers_pool_is_used_and_never_closed(dsn: str, schema: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, min_size=1, max_size=6) as pool:  # not autocommit: transactions
        app = Durable(pool=pool, schema=schema, lease="2s")
        app.migrate()

        @app.function(id="pooled", event="p")
        def pooled(ctx: Context) -> int:
            return int(ctx.step.run("double", lambda: ctx.event.data["n"] * 2))

        app.start(threads=2, poll_interval=0.2)
        run_id = run_of(app, "p", {"n": 21})
        assert app.wait_for_run(run_id, 20).output == 42
        with pool.connection() as conn:  # the caller's own transaction
            [event_id] = app.send("p", {"n": 1}, conn=conn)
        assert app.wait_for_run(app.runs_for_event(event_id)[0].id, 20).output == 2
        app.stop()
        assert not pool.closed
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_run_sent_in_a_transaction_committed_long_after_it_began_starts(
    app: Durable, db: psycopg.Connection[Any], dsn: str
) -> None:
    """Its run is due when the transaction began, and visible to claims only
    at its commit, which the floor of the worker's claims (DueFloor) has
    passed by then: a claim from the start still finds it."""
    app.function(id="late", event="late")(lambda ctx: None)
    app.function(id="other", event="other")(lambda ctx: None)
    app.start(threads=2)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT now()").fetchone()  # the transaction begins
        assert row is not None
        [event_id] = app.send("late", {}, conn=conn)
        wait_until(lambda: db.execute("SELECT now() > %s + interval '1.5 s'", (row[0],))
                   .fetchone() == (True,), what="the transaction to grow old")
        for other in app.send([Event("other", {}) for _ in range(20)]):  # claims move the floor on
            assert app.wait_for_run(app.runs_for_event(other)[0].id, 20).status == "completed"
    [run] = app.runs_for_event(event_id)  # committed as the block ended
    assert app.wait_for_run(run.id, 20).status == "completed"

