"""The operator API: fork, the audit log of actions, the registry of functions and workers."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_for_status
from pydantic import BaseModel

from pgdurable import (
    Concurrency,
    Context,
    Durable,
    InvalidEventError,
    NotFoundError,
    StepError,
)


def audit_rows(db: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    return db.execute(f"SELECT action, run_id::text, who, detail FROM {schema}.operator_audit "
                      "ORDER BY at, action").fetchall()


def counts(db: psycopg.Connection[Any], schema: str) -> tuple[int, int, int]:
    """Runs, events and journal entries: what a refused action must not change."""
    return db.execute(f"SELECT (SELECT count(*) FROM {schema}.runs), "
                      f"(SELECT count(*) FROM {schema}.events), "
                      f"(SELECT count(*) FROM {schema}.steps)").fetchone()  # type: ignore[return-value]


def receipt_flow(app: Durable, calls: Counter[str], fail_total: list[bool]) -> None:
    """ocr -> (a sleep) -> total -> store, where `total` fails while fail_total[0]."""
    @app.function(id="receipt", event="receipt/uploaded", retries=0)
    def receipt(ctx: Context) -> Any:
        text = ctx.step.run("ocr", lambda: calls.update(["ocr"]) or f"text of {ctx.event.data['key']}")
        ctx.step.sleep("settle", "10ms")
        def total() -> float:
            calls["total"] += 1
            if fail_total[0]:
                raise ValueError("no total found")
            return 12.5
        amount = ctx.step.run("total", total)
        return ctx.step.run("store", lambda: calls.update(["store"]) or {"text": text, "total": amount})


def test_fork_reuses_the_steps_before_and_runs_the_rest_again(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    calls: Counter[str] = Counter()
    fail_total = [True]
    receipt_flow(app, calls, fail_total)
    app.start(threads=2, poll_interval=0.1)
    failed = app.wait_for_run(run_of(app, "receipt/uploaded", {"key": "a.png"}), 20)
    assert failed.status == "failed" and calls == {"ocr": 1, "total": 1}

    fail_total[0] = False  # the bug is fixed: go on from the step that failed
    fork = app.wait_for_run(app.fork(failed.id, from_step="total", actor="alice"), 20)
    assert fork.status == "completed"
    assert fork.output == {"text": "text of a.png", "total": 12.5}
    assert calls == {"ocr": 1, "total": 2, "store": 1}  # ocr and the sleep came from the journal
    assert fork.forked_from == failed.id and fork.event_ids == failed.event_ids
    assert app.get_run(failed.id).forked_from is None  # type: ignore[union-attr]
    assert audit_rows(db, app.schema) == [
        ("fork", failed.id, "alice", {"new_run_id": fork.id, "from_step": "total", "data": False})]


def test_fork_with_new_data_from_the_first_step(app: Durable, db: psycopg.Connection[Any]) -> None:
    calls: Counter[str] = Counter()
    receipt_flow(app, calls, [False])
    app.start(threads=2, poll_interval=0.1)
    first = app.wait_for_run(run_of(app, "receipt/uploaded", {"key": "a.png"}), 20)
    runs_before = len(app.list_runs())

    fork = app.wait_for_run(app.fork(first.id, from_step="ocr", data={"key": "b.png"}), 20)
    assert fork.output == {"text": "text of b.png", "total": 12.5}
    assert calls == {"ocr": 2, "total": 2, "store": 2}
    [new_event] = fork.event_ids
    assert new_event != first.event_ids[0]
    stored = app.get_event(new_event)
    assert stored is not None and (stored.name, stored.data) == ("receipt/uploaded", {"key": "b.png"})
    # stored, not sent: it triggered nothing beside the fork
    assert [r.id for r in app.runs_for_event(new_event)] == [fork.id]
    assert len(app.list_runs()) == runs_before + 1
    [(_, _, who, _)] = audit_rows(db, app.schema)
    assert who == db.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]


def test_fork_refuses_unknown_runs_steps_and_bad_data(app: Durable, db: psycopg.Connection[Any]) -> None:
    class Upload(BaseModel):
        key: str

    app.event("receipt/uploaded", Upload)
    receipt_flow(app, Counter(), [False])
    app.start(threads=2, poll_interval=0.1)
    done = app.wait_for_run(run_of(app, "receipt/uploaded", {"key": "a.png"}), 20)
    before = counts(db, app.schema)

    with pytest.raises(NotFoundError, match="no run with id"):
        app.fork(str(uuid.uuid4()), from_step="ocr")
    with pytest.raises(NotFoundError, match=r"has no step 'nope' \(its steps: 'ocr', 'settle'"):
        app.fork(done.id, from_step="nope")
    with pytest.raises(InvalidEventError, match="does not match its schema"):
        app.fork(done.id, from_step="ocr", data={"key": 7, "extra": None} | {"key": None})
    with pytest.raises(InvalidEventError, match="must be a dict"):
        app.fork(done.id, from_step="ocr", data=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="from_step must be a step key"):
        app.fork(done.id, from_step=3)  # type: ignore[arg-type]
    assert counts(db, app.schema) == before
    assert audit_rows(db, app.schema) == []


def test_a_failed_step_before_the_fork_point_fails_again_from_the_journal(app: Durable) -> None:
    calls: Counter[str] = Counter()

    @app.function(id="tolerant", event="t", retries=0)
    def tolerant(ctx: Context) -> Any:
        try:
            ctx.step.run("flaky", lambda: calls.update(["flaky"]) or 1 / 0)
        except StepError as exc:
            caught = exc.error_type
        return ctx.step.run("after", lambda: calls.update(["after"]) or caught)

    app.start(threads=1, poll_interval=0.1)
    first = app.wait_for_run(run_of(app, "t"), 20)
    fork = app.wait_for_run(app.fork(first.id, from_step="after"), 20)
    assert (first.output, fork.output) == ("ZeroDivisionError", "ZeroDivisionError")
    assert calls == {"flaky": 1, "after": 2}


def test_fork_and_replay_without_the_functions_code_keep_its_flow_control(
    make_app: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    """An app that does not define the function (the CLI's) starts the
    copy with the options the run had: here its concurrency limit."""
    worker = make_app()
    worker.migrate()

    @worker.function(id="limited", event="l", concurrency=Concurrency(limit=1, key="event.data.user"),
                     retries=5)
    def limited(ctx: Context) -> Any:
        return ctx.step.run("only", lambda: ctx.event.data["user"])

    worker.start(threads=2, poll_interval=0.1)
    first = worker.wait_for_run(run_of(worker, "l", {"user": "u1"}), 20)
    operator = make_app()  # no functions
    copies = [operator.replay(first.id, actor="ops"), operator.fork(first.id, from_step="only")]
    for copy in copies:
        assert worker.wait_for_run(copy, 20).output == "u1"
    rows = db.execute(f"SELECT options FROM {worker.schema}.runs WHERE id = ANY(%s::uuid[])",
                      ([first.id, *copies],)).fetchall()
    assert [r[0]["slots"] for r in rows] == [[{"key": 'limited "u1"', "limit": 1}]] * 3
    assert [a[:3] for a in audit_rows(db, worker.schema)] == [
        ("replay", first.id, "ops"), ("fork", first.id, db.execute("SELECT session_user").fetchone()[0])]  # type: ignore[index]


def test_cancels_are_audited_one_row_per_run(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="idle", event="idle")
    def idle(ctx: Context) -> None:
        return None

    runs = [run_of(app, "idle") for _ in range(4)]  # no worker: they stay queued
    assert app.cancel(runs[0], actor="bob") is True
    assert app.cancel(runs[0], actor="bob") is False  # finished: not logged again
    assert app.cancel_runs(run_ids=runs[1:3], actor="carol") == 2
    assert app.cancel_runs("idle") == 1
    got = sorted((run_id, who) for action, run_id, who, _ in audit_rows(db, app.schema)
                 if action == "cancel")
    user = db.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]
    assert got == sorted([(runs[0], "bob"), (runs[1], "carol"), (runs[2], "carol"), (runs[3], user)])
    assert {app.get_run(r).status for r in runs} == {"cancelled"}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not both"):
        app.cancel_runs("idle", run_ids=runs)


def test_workers_record_their_functions_and_themselves(make_app: Callable[..., Durable]) -> None:
    app = make_app()
    app.migrate()

    @app.function(id="nightly", cron="0 3 * * *", timezone="Europe/Paris", retries=1)
    def nightly(ctx: Context) -> None:
        return None

    @app.function(id="parse", event=["file/uploaded", "file/retried"],
                  concurrency=Concurrency(limit=2, key=lambda e: e.data["user"]))
    def parse(ctx: Context) -> None:
        return None

    operator = make_app()
    assert operator.list_functions() == [] and operator.list_workers() == []
    app.start(threads=3, poll_interval=0.1)
    functions = {f.id: f for f in operator.list_functions()}
    assert set(functions) == {"nightly", "parse"}
    assert functions["nightly"].cron == "0 3 * * *" and functions["nightly"].retries == 1
    assert functions["nightly"].next_tick is not None
    assert functions["parse"].events == ("file/uploaded", "file/retried")
    [limit] = functions["parse"].options["concurrency"]
    assert limit["limit"] == 2 and limit["key"].endswith("<lambda>")
    assert {f.live_workers for f in functions.values()} == {1}
    [worker] = operator.list_workers()
    assert (worker.threads, worker.functions, worker.live) == (3, ("nightly", "parse"), True)
    assert worker.to_dict()["functions"] == ["nightly", "parse"]

    app.stop()
    assert operator.list_workers() == []
    assert {f.live_workers for f in operator.list_functions()} == {0}


def test_workers_not_seen_within_their_lease_are_not_live_and_go_after_a_day(
    make_app: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    app = make_app()
    app.migrate()
    for name, seen in (("frozen", "10 seconds"), ("dead", "25 hours")):
        db.execute(f"INSERT INTO {app.schema}.workers (id, host, pid, version, functions, threads, "
                   "lease, started_at, last_seen_at) VALUES (%s, 'h', 1, '0', '{}', 1, '2s', "
                   f"now() - interval '{seen}', now() - interval '{seen}')", (name,))
    assert [(w.id, w.live) for w in app.list_workers()] == [("dead", False), ("frozen", False)]

    @app.function(id="f", event="f")
    def f(ctx: Context) -> None:
        return None

    app.start(threads=1, poll_interval=0.1)  # a starting worker clears rows a day old
    frozen, started = app.list_workers()
    assert (frozen.id, frozen.live) == ("frozen", False)
    assert (started.id, started.live) == (app._worker.id, True)  # type: ignore[union-attr]


def test_overview_counts_are_bounded_and_say_so(app: Durable) -> None:
    @app.function(id="idle", event="idle")
    def idle(ctx: Context) -> None:
        return None

    runs = [run_of(app, "idle") for _ in range(5)]  # no worker: queued
    app.cancel(runs[0])
    since = datetime.now(UTC) - timedelta(minutes=5)
    counts = app.count_runs(since)
    assert counts.by_function == {"idle": {"queued": 4, "cancelled": 1}}
    assert (counts.total, counts.capped, counts.of("queued")) == (5, False, 4)
    newest = app.count_runs(since, cap=3)
    assert (newest.total, newest.capped) == (3, True)
    assert app.count_runs(datetime.now(UTC) + timedelta(minutes=1)).total == 0
    queue = app.queue_summary()
    assert queue.counts.by_function == {"idle": {"queued": 4}}
    assert queue.oldest_ready_age is not None and queue.oldest_ready_age >= timedelta(0)
    assert app.queue_summary(cap=2).counts.capped
    with pytest.raises(ValueError, match="naive"):
        app.count_runs(datetime.now())
    assert [r.id for r in app.iter_runs(function="idle", page=2)] == runs[::-1]


def test_get_waits_says_what_a_parked_run_waits_for(app: Durable) -> None:
    @app.function(id="approval", event="order/placed")
    def approval(ctx: Context) -> Any:
        return ctx.step.wait_for_event("approved", event="order/approved", match="data.order",
                                       timeout="1h")

    app.start(threads=1, poll_interval=0.1)
    run_id = run_of(app, "order/placed", {"order": 7})
    wait_for_status(app, run_id, "waiting")
    [wait] = app.get_waits(run_id)
    assert (wait.step_key, wait.event, wait.match, wait.value, wait.cancel) == (
        "approved", "order/approved", "data.order", 7, False)
    assert wait.until is not None and wait.until > datetime.now(UTC) + timedelta(minutes=59)
    app.send("order/approved", {"order": 7})
    assert app.wait_for_run(run_id, 20).status == "completed"
    assert app.get_waits(run_id) == []
