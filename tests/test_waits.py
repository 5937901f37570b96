"""Durable waits: sleep, sleep_until, wait_for_event (against real Postgres)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import run_of, status_of, wait_until

from pgdurable import Context, Durable, Event
from pgdurable._expressions import compile_condition

# -- sleep ------------------------------------------------------------------


def test_a_sleeping_run_holds_no_thread_and_wakes_on_time(app: Durable) -> None:
    calls: Counter[str] = Counter()

    @app.function(id="napper", event="nap")
    def napper(ctx: Context) -> float:
        before = ctx.step.run("before", lambda: calls.update(["before"]) or time.time())
        ctx.step.sleep("nap", "1500ms")
        after = ctx.step.run("after", lambda: calls.update(["after"]) or time.time())
        return float(after - before)

    app.start(threads=1, poll_interval=5.0)  # the poll cannot be what wakes it
    run_id = run_of(app, "nap")
    wait_until(lambda: status_of(app, run_id) == "sleeping", what="the run to sleep")
    assert app._worker is not None and app._worker.in_flight == 0
    run = app.wait_for_run(run_id, 20)
    assert run.status == "completed"
    assert 1.5 <= run.output < 3.5, "woken at the time, not at the next poll"
    assert calls == {"before": 1, "after": 1}


def test_a_sleep_survives_a_restart(make_app: Any) -> None:
    calls: Counter[str] = Counter()

    def register(app: Durable) -> None:
        @app.function(id="long-nap", event="nap")
        def long_nap(ctx: Context) -> str:
            ctx.step.run("before", lambda: calls.update(["before"]))
            ctx.step.sleep("nap", timedelta(seconds=1))
            ctx.step.run("after", lambda: calls.update(["after"]))
            return "rested"

    first = make_app()
    first.migrate()
    register(first)
    first.start(threads=2)
    run_id = run_of(first, "nap")
    wait_until(lambda: status_of(first, run_id) == "sleeping", what="the run to sleep")
    first.stop()

    second = make_app()
    register(second)
    second.start(threads=2)
    assert second.wait_for_run(run_id, 20).output == "rested"
    assert calls == {"before": 1, "after": 1}


def test_sleep_until_in_the_past_goes_on_at_once(app: Durable) -> None:
    @app.function(id="late", event="late")
    def late(ctx: Context) -> str:
        ctx.step.sleep_until("past", datetime.now(UTC) - timedelta(hours=1))
        return "on"

    app.start(threads=1)
    run_id = run_of(app, "late")
    assert app.wait_for_run(run_id, 20).output == "on"


@pytest.mark.parametrize(("call", "message"), [
    (lambda s: s.sleep_until("x", datetime.now() + timedelta(seconds=1)), "naive datetime"),
    (lambda s: s.sleep("x", "5 parsecs"), "is not a duration"),
    (lambda s: s.sleep("x", -1), "must not be negative"),
    (lambda s: s.wait_for_event("x", event="e", match="data.missing"), "no value at 'data.missing'"),
    (lambda s: s.wait_for_event("x", event="e", match="data..x"), "not a dotted field path"),
    (lambda s: s.wait_for_event("x", event=[]), "must be a name or a list"),
    (lambda s: s.wait_for_event("x", event="e", if_="async.data.x = 1"), "cannot read"),
])
def test_bad_wait_arguments_fail_the_run_clearly(
    app: Durable, call: Any, message: str
) -> None:
    @app.function(id="bad-wait", event="bad", retries=0)
    def bad_wait(ctx: Context) -> None:
        call(ctx.step)

    app.start(threads=1)
    run = app.wait_for_run(run_of(app, "bad"), 20)
    assert run.status == "failed"
    assert run.error is not None and message in run.error.message


# -- wait_for_event -----------------------------------------------------------


def test_wait_for_event_matches_a_field_of_the_trigger(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="approval", event="order/placed")
    def approval(ctx: Context) -> Any:
        event = ctx.step.wait_for_event(
            "approved", event=["order/approved", "order/rejected"], match="data.order", timeout="30s")
        assert event is not None
        return [event.name, event.data]

    app.start(threads=2)
    run_id = run_of(app, "order/placed", {"order": 7})
    wait_until(lambda: status_of(app, run_id) == "waiting", what="the run to wait")
    app.send("order/approved", {"order": 8})  # another order: not a match
    app.send("order/rejected", {"order": 7, "why": "stock"})
    assert app.wait_for_run(run_id, 20).output == ["order/rejected", {"order": 7, "why": "stock"}]
    assert db.execute(f"SELECT count(*) FROM {app.schema}.waits").fetchone() == (0,)


def test_wait_for_event_times_out_with_none(app: Durable) -> None:
    @app.function(id="impatient", event="start")
    async def impatient(ctx: Context) -> str:
        event = await ctx.step.wait_for_event("reply", event="reply", timeout="1s")
        return "timed out" if event is None else "replied"

    app.start(threads=1, poll_interval=5.0)
    run_id = run_of(app, "start")
    assert app.wait_for_run(run_id, 20).output == "timed out"
    app.send("reply", {})  # too late: changes nothing
    assert app.wait_for_run(run_id, 1).output == "timed out"


def test_wait_for_event_with_a_condition(app: Durable) -> None:
    @app.function(id="big-payment", event="invoice")
    def big_payment(ctx: Context) -> Any:
        event = ctx.step.wait_for_event(
            "paid", event="payment", timeout="30s",
            if_="async.data.invoice == event.data.id && (async.data.amount >= 100 or async.data.vip == true)")
        return event.data if event else None

    app.start(threads=2)
    run_id = run_of(app, "invoice", {"id": "inv-1"})
    wait_until(lambda: status_of(app, run_id) == "waiting", what="the run to wait")
    app.send("payment", {"invoice": "inv-1", "amount": 99})
    app.send("payment", {"invoice": "inv-2", "amount": 500})
    app.send("payment", {"invoice": "inv-1", "amount": 150})
    assert app.wait_for_run(run_id, 20).output == {"invoice": "inv-1", "amount": 150}


def test_an_event_from_before_the_wait_is_not_delivered(app: Durable) -> None:
    app.send("ping", {"k": 1})

    @app.function(id="fresh-only", event="start")
    def fresh_only(ctx: Context) -> bool:
        return ctx.step.wait_for_event("ping", event="ping", match="data.k", timeout="1s") is None

    app.start(threads=1)
    assert app.wait_for_run(run_of(app, "start", {"k": 1}), 20).output is True


def test_an_event_sent_while_the_run_gets_to_the_wait_is_delivered(app: Durable) -> None:
    """Sent after the step before the wait began, before the wait exists."""
    sent = threading.Event()

    @app.function(id="quick-reply", event="start")
    def quick_reply(ctx: Context) -> Any:
        def ask() -> None:
            app.send("answer", {"k": ctx.event.data["k"]})
            sent.set()
        ctx.step.run("ask", ask)
        event = ctx.step.wait_for_event("answer", event="answer", match="data.k", timeout="30s")
        return event.data if event else None

    app.start(threads=1)
    assert app.wait_for_run(run_of(app, "start", {"k": "x"}), 20).output == {"k": "x"}
    assert sent.is_set()


def test_an_event_a_crashed_attempt_sent_still_counts(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """The step before the wait sent its event in an attempt a crash cut
    short; run again, its send found the event stored (same id) and kept
    it, with the time it was first received: before this attempt of the
    step began. The wait still takes it (found by bench/chaos.py)."""
    first_done, go_on = threading.Event(), threading.Event()

    @app.function(id="ask-then-wait", event="start")
    def ask_then_wait(ctx: Context) -> Any:
        ctx.step.run("first", lambda: None)
        first_done.set()
        go_on.wait(20)  # meanwhile the "crashed attempt" of `ask` sends its event
        ctx.step.send_event("ask", Event("answer", {"k": ctx.event.data["k"]}))
        event = ctx.step.wait_for_event("answer", event="answer", match="data.k", timeout="30s")
        return event.data if event else None

    app.start(threads=1)
    run_id = run_of(app, "start", {"k": "x"})
    wait_until(lambda: first_done.is_set() and app.get_steps(run_id), 20, "step first")
    db.execute(f'INSERT INTO "{app.schema}".events (id, name, data, ts, received_at) VALUES '
               "(%s, 'answer', '{\"k\": \"x\"}', now(), clock_timestamp())",
               (f"pgdurable:{run_id}/ask/0",))
    go_on.set()
    assert app.wait_for_run(run_id, 20).output == {"k": "x"}


def test_no_wake_up_is_lost_in_1000_races(app: Durable, db: psycopg.Connection[Any]) -> None:
    """Each run finishes a step, then waits; the test sends the matching event
    the moment that step is committed, racing the run's suspension."""
    runs = 1000

    @app.function(id="racer", event="race/start")
    def racer(ctx: Context) -> Any:
        ctx.step.run("ready", lambda: None)
        event = ctx.step.wait_for_event("go", event="race/go", match="data.n", timeout="60s")
        return None if event is None else event.data["n"]

    app.start(threads=8, prefetch=64)
    app.send([Event("race/start", {"n": n}) for n in range(runs)])
    sent: set[int] = set()
    deadline = time.monotonic() + 120
    while len(sent) < runs and time.monotonic() < deadline:
        ready = db.execute(
            f"SELECT e.data->>'n' FROM {app.schema}.steps s JOIN {app.schema}.runs r ON r.id = s.run_id "
            f"JOIN {app.schema}.events e ON e.id = r.event_ids[1] WHERE s.step_key = 'ready'").fetchall()
        new = [int(n) for (n,) in ready if int(n) not in sent]
        if new:
            app.send([Event("race/go", {"n": n}) for n in new])
            sent.update(new)
    assert len(sent) == runs

    def all_done() -> bool:
        row = db.execute(f"SELECT count(*) FROM {app.schema}.results").fetchone()
        return row is not None and row[0] == runs

    wait_until(all_done, timeout=120, what="every racer to finish")
    outputs = db.execute(
        f"SELECT r.output, e.data->'n' FROM {app.schema}.results r JOIN {app.schema}.runs u "
        f"ON u.id = r.run_id JOIN {app.schema}.events e ON e.id = u.event_ids[1]").fetchall()
    assert all(output == n for output, n in outputs), "every run got its own event, none timed out"


def test_waits_are_found_by_index(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="indexed", event="start")
    def indexed(ctx: Context) -> None:
        ctx.step.wait_for_event("w", event="wake", match="data.k", timeout="1h")

    app.start(threads=2)
    app.send([Event("start", {"k": n}) for n in range(50)])
    wait_until(lambda: len(app.list_runs(status="waiting")) == 50, what="50 waiting runs")
    db.execute(f"ANALYZE {app.schema}.waits")
    db.execute("SET enable_seqscan = off")  # a tiny table: make the planner show its index choice
    plan = "\n".join(r[0] for r in db.execute(
        f"EXPLAIN SELECT * FROM {app.schema}.waits WHERE event_name = 'wake' "
        "AND match_path = '{data,k}' AND match_value = '7'"))
    assert "waits_match" in plan


# -- if_ expressions, evaluated by Postgres ----------------------------------


@pytest.mark.parametrize(("expression", "doc", "expected"), [
    ("async.data.n == 1", {"data": {"n": 1}}, True),
    ("async.data.n != 1", {"data": {"n": 1}}, False),
    ("async.data.n > event.data.n", {"data": {"n": 5}}, True),
    ("async.data.s == 'it\\'s'", {"data": {"s": "it's"}}, True),
    ("async.data.s == \"a \\\"q\\\"\"", {"data": {"s": 'a "q"'}}, True),
    ("async.data.n < 2 and async.data.s == 'x' or async.data.flag == true",
     {"data": {"n": 5, "s": "x", "flag": True}}, True),
    ("(async.data.n < 2 || async.data.n > 4) && async.data.s == 'y'",
     {"data": {"n": 5, "s": "x"}}, False),
    ("async.data.missing == null", {"data": {}}, False),
    ("async.data.name == \"'; DROP TABLE x; --\"", {"data": {"name": "'; DROP TABLE x; --"}}, True),
])
def test_if_expressions_compile_to_jsonpath(
    db: psycopg.Connection[Any], expression: str, doc: dict[str, Any], expected: bool
) -> None:
    condition = compile_condition(expression, {"data": {"n": 3}})
    row = db.execute("SELECT jsonb_path_match(%s::jsonb, %s::jsonpath, %s::jsonb, true)",
                     (psycopg.types.json.Jsonb(doc), condition.jsonpath,
                      psycopg.types.json.Jsonb(condition.variables))).fetchone()
    assert row is not None and bool(row[0]) is expected


@pytest.mark.parametrize(("expression", "message"), [
    ("", "non-empty"),
    ("async.data.n", "ends too early"),
    ("async.data.n == ", "ends too early"),
    ("data.n == 1", "is not a literal"),
    ("async.data.n == 1 )", "unexpected"),
    ("(async.data.n == 1", "not closed"),
    ("async.data.n ~ 1", "cannot read"),
    ("async.data.n == event.data.absent", "no value at 'data.absent'"),
    ("async.data.n async.data.m", "expected a comparison"),
])
def test_bad_if_expressions_are_named(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_condition(expression, {"data": {"n": 3}})


# -- issue 22: the wait's window on one clock; waits in a row -------------------


def test_an_event_sent_from_a_transaction_older_than_the_step_before_is_not_missed(
    app: Durable, dsn: str
) -> None:
    """The sender's transaction began before step "a"; the event is sent
    (with conn=) and committed while "a" runs: the wait after "a" takes it."""
    in_a, release = threading.Event(), threading.Event()

    @app.function(id="approve", event="order")
    def approve(ctx: Context) -> str | None:
        ctx.step.run("a", lambda: in_a.set() or release.wait(20))
        got = ctx.step.wait_for_event("approval", event="approval", timeout="20s")
        return None if got is None else got.id

    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")  # its transaction (and its now()) begins here
        time.sleep(0.05)
        app.start(threads=1)
        run_id = run_of(app, "order")
        assert in_a.wait(20)
        [sent] = app.send("approval", {}, conn=conn)
        conn.commit()
    release.set()
    assert app.wait_for_run(run_id, 30).output == sent


def test_two_waits_in_a_row_take_two_events(app: Durable) -> None:
    in_a, release = threading.Event(), threading.Event()

    @app.function(id="two-approvals", event="order")
    def two_approvals(ctx: Context) -> list[str]:
        ctx.step.run("a", lambda: in_a.set() or release.wait(20))
        got = [ctx.step.wait_for_event("approval", event="approval", timeout="20s")
               for _ in range(2)]
        return [e.id for e in got if e is not None]

    app.start(threads=1)
    early = run_of(app, "order")  # both approvals come while it is in step "a"
    assert in_a.wait(20)
    sent = app.send([Event("approval", {}), Event("approval", {})])
    release.set()
    assert app.wait_for_run(early, 30).output == sent

    in_a.clear()
    late = run_of(app, "order")  # one before the first wait, one while the second waits
    assert in_a.wait(20)
    [first] = app.send("approval", {})
    wait_until(lambda: status_of(app, late) == "waiting", what="the second wait")
    [second] = app.send("approval", {})
    assert app.wait_for_run(late, 30).output == [first, second]
