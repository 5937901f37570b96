"""invoke, send_event and cancelling parked runs (against real Postgres)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_until

from pgdurable import ConfigurationError, Context, Durable, Event, InvalidEventError, StepError


def test_invoke_returns_the_child_output_and_links_the_runs(app: Durable) -> None:
    release = threading.Event()

    @app.function(id="square", event="math/square")
    def square(ctx: Context) -> int:
        release.wait(30)
        return int(ctx.event.data["n"]) ** 2

    @app.function(id="caller", event="math/go")
    def caller(ctx: Context) -> int:
        return int(ctx.step.invoke("sq", function=square, data={"n": 12})) + 1

    app.start(threads=1)  # one thread: the parent must give it up for the child to run
    parent = run_of(app, "math/go")
    children = wait_until(lambda: [r for r in app.list_runs(function="square")], what="the child")
    [child] = children
    assert child.parent_run_id == parent
    wait_until(lambda: (run := app.get_run(parent)) and run.status == "waiting", what="the parent to wait")
    release.set()
    assert app.wait_for_run(parent, 20).output == 145
    assert app.wait_for_run(child.id, 5).status == "completed"


def test_a_failed_child_raises_step_error_in_the_parent(app: Durable) -> None:
    @app.function(id="fragile", event="never", retries=0)
    async def fragile(ctx: Context) -> None:
        raise RuntimeError(f"broken {ctx.event.data['why']}")

    @app.function(id="careful", event="go")
    async def careful(ctx: Context) -> str:
        try:
            await ctx.step.invoke("try", function="fragile", data={"why": "glass"})
        except StepError as exc:
            return f"{exc.error_type}: {exc.message}"
        return "no error"

    app.start(threads=2)
    assert app.wait_for_run(run_of(app, "go"), 20).output == "RuntimeError: broken glass"


def test_an_invoke_timeout_raises_and_a_cancelled_child_too(app: Durable) -> None:
    @app.function(id="slow-child", event="never")
    def slow_child(ctx: Context) -> None:
        ctx.step.sleep("forever", "1h")

    @app.function(id="waits-briefly", event="go")
    def waits_briefly(ctx: Context) -> list[str]:
        errors = []
        for step, timeout in (("short", "1s"), ("long", None)):
            try:
                ctx.step.invoke(step, function="slow-child", timeout=timeout)
            except StepError as exc:
                errors.append(exc.error_type)
        return errors

    app.start(threads=2)
    parent = run_of(app, "go")
    # after the first invoke times out, cancel the second child while it sleeps
    wait_until(lambda: len(app.list_runs(function="slow-child", status="sleeping")) == 2,
               what="two sleeping children")
    [newest, _] = app.list_runs(function="slow-child")
    assert app.cancel(newest.id)
    assert app.wait_for_run(parent, 20).output == ["TimeoutError", "Cancelled"]


def test_invoking_an_unknown_function_fails_the_run(app: Durable) -> None:
    @app.function(id="lost", event="go", retries=0)
    def lost(ctx: Context) -> None:
        ctx.step.invoke("x", function="nobody")

    app.start(threads=1)
    run = app.wait_for_run(run_of(app, "go"), 20)
    assert run.error is not None and "'nobody' is not a function registered" in run.error.message


def test_send_event_sends_once_across_retries(app: Durable, db: psycopg.Connection[Any]) -> None:
    attempts: Counter[str] = Counter()
    received: Counter[str] = Counter()

    @app.function(id="notify", event="user/signed-up")
    def notify(ctx: Context) -> list[str]:
        ids = ctx.step.send_event("welcome", [Event("email/send", {"to": ctx.event.data["email"]}),
                                              Event("audit/log", {"what": "signup"}, id="fixed")])
        attempts["handler"] += 1
        if attempts["handler"] < 3:
            raise RuntimeError("fail after sending, to force replays")
        return ids

    @app.function(id="mailer", event="email/send")
    def mailer(ctx: Context) -> None:
        received[ctx.event.data["to"]] += 1

    app.start(threads=2)
    run_id = run_of(app, "user/signed-up", {"email": "a@example.com"})
    ids = app.wait_for_run(run_id, 20).output
    assert ids == [f"pgdurable:{run_id}/welcome/0", "fixed"]
    wait_until(lambda: received["a@example.com"] == 1, what="the email")
    assert attempts["handler"] == 3
    count = db.execute(f"SELECT count(*) FROM {app.schema}.events WHERE name = 'email/send'").fetchone()
    assert count == (1,)
    assert all(r.status == "completed" for r in app.runs_for_event(ids[0]))


def test_send_event_rejects_what_is_not_an_event(app: Durable) -> None:
    @app.function(id="sloppy", event="go", retries=0)
    def sloppy(ctx: Context) -> None:
        ctx.step.send_event("s", [{"name": "x"}])  # type: ignore[list-item]

    app.start(threads=1)
    run = app.wait_for_run(run_of(app, "go"), 20)
    assert run.error is not None and "send_event takes an Event" in run.error.message


def test_cancel_sleeping_and_waiting_runs(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="sleepy", event="go")
    def sleepy(ctx: Context) -> None:
        ctx.step.sleep("nap", "1h")

    @app.function(id="patient", event="go")
    def patient(ctx: Context) -> None:
        ctx.step.wait_for_event("w", event="never")

    app.start(threads=2)
    [event_id] = app.send("go", {})
    runs = app.runs_for_event(event_id)
    wait_until(lambda: {r.status for r in app.runs_for_event(event_id)} == {"sleeping", "waiting"},
               what="one sleeping and one waiting run")
    for run in runs:
        assert app.cancel(run.id)
    assert {app.wait_for_run(r.id, 5).status for r in runs} == {"cancelled"}
    assert db.execute(f"SELECT count(*) FROM {app.schema}.waits").fetchone() == (0,)
    assert db.execute(f"SELECT count(*) FROM {app.schema}.queue").fetchone() == (0,)


def test_cancel_runs_by_function_and_creation_time(app: Durable) -> None:
    @app.function(id="batch-job", event="job")
    def batch_job(ctx: Context) -> None: ...

    @app.function(id="other-job", event="job")
    def other_job(ctx: Context) -> None: ...

    def batch_runs(count: int) -> list[str]:
        return [r.id for e in app.send([Event("job", {}) for _ in range(count)])
                for r in app.runs_for_event(e) if r.function_id == "batch-job"]

    old = batch_runs(3)
    cut = datetime.now(UTC)
    wait_until(lambda: datetime.now(UTC) > cut + timedelta(milliseconds=5), what="time to pass")
    new = batch_runs(2)
    assert app.cancel_runs("batch-job", created_before=cut) == 3
    assert {app.get_run(r).status for r in old} == {"cancelled"}  # type: ignore[union-attr]
    assert {app.get_run(r).status for r in new} == {"queued"}  # type: ignore[union-attr]
    assert len(app.list_runs(function="other-job", status="queued")) == 5
    assert app.cancel_runs("batch-job", created_after=cut) == 2
    with pytest.raises(ConfigurationError, match="no function 'nope'"):
        app.cancel_runs("nope")
    with pytest.raises(ConfigurationError, match="naive"):
        app.cancel_runs("batch-job", created_after=datetime.now())


def test_a_cancel_racing_a_claim_is_not_lost(app: Durable, dsn: str) -> None:
    app.function(id="claimed", event="go")(lambda ctx: None)
    run_id = run_of(app, "go")
    with psycopg.connect(dsn) as claimer:  # a claim in flight: the row locked, not yet committed
        claimer.execute(f"UPDATE {app.schema}.queue SET status = 'running', lease_token = 1 "
                        "WHERE run_id = %s", (run_id,))
        answer: list[bool] = []
        canceller = threading.Thread(target=lambda: answer.append(app.cancel(run_id)))
        canceller.start()
        wait_until(lambda: claimer.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone() != (0,),
            what="the cancel to wait for the claim")
        claimer.commit()
        canceller.join(10)
    assert answer == [True]
    with app.connection() as conn:
        flagged = conn.execute(f"SELECT cancel_requested FROM {app.schema}.queue WHERE run_id = %s",
                               (run_id,)).fetchone()
    assert flagged == (True,)  # the running run stops at its next step boundary


# -- issue 22, s12: ids pgdurable generates cannot be taken first -------------


def test_an_event_sent_first_under_a_guessable_id_does_not_hijack_an_invoke(app: Durable) -> None:
    gate = threading.Event()

    @app.function(id="charge", event="never")
    def charge(ctx: Context) -> Any:
        return [ctx.event.name, ctx.event.data["amount"]]

    @app.function(id="checkout", event="checkout")
    def checkout(ctx: Context) -> Any:
        ctx.step.run("wait", lambda: gate.wait(20))
        return ctx.step.invoke("charge", function="charge", data={"amount": 10})

    app.start(threads=2)
    run_id = run_of(app, "checkout")
    app.send("never", {"amount": 10000}, id=f"{run_id}/charge")  # what used to be its id
    gate.set()
    assert app.wait_for_run(run_id, 20).output == ["pgdurable/invoked", 10]


def test_an_event_sent_first_under_a_guessable_id_does_not_stop_on_failure(app: Durable) -> None:
    handled = threading.Event()
    gate = threading.Event()

    @app.function(id="fragile", event="go", retries=0, on_failure=lambda ctx: handled.set())
    def fragile(ctx: Context) -> None:
        ctx.step.run("wait", lambda: gate.wait(20))
        raise RuntimeError("down")

    app.start(threads=2)
    run_id = run_of(app, "go")
    app.send("x", {}, id=f"{run_id}/failed")  # what used to be its handler's event id
    gate.set()
    assert app.wait_for_run(run_id, 20).status == "failed"
    assert handled.wait(20), "the on_failure handler ran"


def test_senders_cannot_use_the_reserved_id_namespace(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    with pytest.raises(InvalidEventError, match="reserved for the ids pgdurable generates"):
        app.send("x", {}, id="pgdurable:0/welcome/0")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="reserved"):
        db.execute(f"SELECT {app.schema}.send_events(%s::jsonb, '[]', '1h')",
                   ('[["pgdurable:0/welcome/0", "x", {}, null]]',))
    assert db.execute(f"SELECT count(*) FROM {app.schema}.events").fetchone() == (0,)
