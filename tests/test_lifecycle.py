"""cancel_on, on_failure and timeouts (against real Postgres)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from conftest import run_of, status_of, wait_until

from pgdurable import (
    Cancel,
    Context,
    Debounce,
    Durable,
    Event,
    InvalidEventError,
    StepError,
    Timeouts,
)


def test_cancel_on_cancels_sleeping_waiting_and_running_runs(app: Durable) -> None:
    in_step = threading.Event()
    release = threading.Event()

    @app.function(id="drip", event="user/signed-up",
                  cancel_on=[Cancel(event="user/deleted", match="data.user_id")])
    def drip(ctx: Context) -> str:
        if ctx.event.data["mode"] == "sleep":
            ctx.step.sleep("nap", "1h")
        elif ctx.event.data["mode"] == "wait":
            ctx.step.wait_for_event("reply", event="user/replied", timeout="1h")
        else:
            ctx.step.run("busy", lambda: in_step.set() or release.wait(30))
            ctx.step.run("after", lambda: "never")
        return "finished"

    app.start(threads=2)
    runs = {mode: run_of(app, "user/signed-up", {"user_id": mode, "mode": mode})
            for mode in ("sleep", "wait", "run")}
    wait_until(lambda: status_of(app, runs["sleep"]) == "sleeping", what="the sleep")
    wait_until(lambda: status_of(app, runs["wait"]) == "waiting", what="the wait")
    assert in_step.wait(20)
    app.send("user/deleted", {"user_id": "nobody"})  # matches no run
    deleted = {mode: app.send("user/deleted", {"user_id": mode})[0] for mode in runs}
    for mode in ("sleep", "wait"):
        run = app.wait_for_run(runs[mode], 10)
        assert run.status == "cancelled" and run.error is not None
        assert run.error.message == f"cancelled by event user/deleted (id {deleted[mode]})"
    release.set()  # the running one stops at its next step boundary
    run = app.wait_for_run(runs["run"], 20)
    assert run.status == "cancelled" and run.error is not None
    assert run.error.message == f"cancelled by event user/deleted (id {deleted['run']})"


def test_cancel_on_with_if_and_a_timeout(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="order", event="order/placed", cancel_on=[
        Cancel(event="order/cancelled", match="data.order", if_="async.data.refund == true"),
        Cancel(event="shop/closed", timeout="1s"),
    ])
    def order(ctx: Context) -> None:
        ctx.step.sleep("settle", "1h")

    app.start(threads=1)
    run_id = run_of(app, "order/placed", {"order": 7})
    wait_until(lambda: status_of(app, run_id) == "sleeping", what="the sleep")
    app.send("order/cancelled", {"order": 7, "refund": False})  # the if_ does not hold
    listeners = db.execute(f"SELECT min(expires_at) - now() FROM {app.schema}.waits "
                           "WHERE run_id = %s AND cancel", (run_id,)).fetchone()
    assert listeners is not None and listeners[0] is not None
    time.sleep(max(0.0, listeners[0].total_seconds()) + 0.1)  # let the 1s listener expire
    app.send("shop/closed", {})  # too late: no longer listened for
    assert status_of(app, run_id) == "sleeping"
    app.send("order/cancelled", {"order": 7, "refund": True})
    assert app.wait_for_run(run_id, 10).status == "cancelled"
    assert db.execute(f"SELECT count(*) FROM {app.schema}.waits WHERE run_id = %s",
                      (run_id,)).fetchone() == (0,)  # its listeners went with it


def test_cancel_on_needs_the_match_field_at_send_time(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="drip", event="user/signed-up",
                  cancel_on=[Cancel(event="user/deleted", match="data.user_id")])
    def drip(ctx: Context) -> None:
        return None

    with pytest.raises(InvalidEventError, match=r"has no value at 'data\.user_id'"):
        app.send("user/signed-up", {"email": "a@example.com"})
    assert db.execute(f"SELECT count(*) FROM {app.schema}.events").fetchone() == (0,)


@pytest.mark.parametrize(("options", "message"), [
    ({"cancel_on": "user/deleted"}, "cancel_on takes a list of Cancel"),
    ({"cancel_on": [Cancel(event="")]}, "event name in cancel_on"),
    ({"cancel_on": [Cancel(event="x", match="data..id")]}, "not a dotted field path"),
    ({"timeouts": {"start": "1m"}}, "timeouts takes Timeouts"),
    ({"timeouts": Timeouts(finish="soon")}, "timeouts.finish"),
    ({"on_failure": "notify"}, "on_failure must be a handler"),
])
def test_bad_lifecycle_options_are_refused_at_import(
    app: Durable, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):  # ConfigurationError or InvalidEventError
        app.function(id="f", event="e", **options)(lambda ctx: None)


def test_on_failure_runs_once_with_the_event_and_the_error(app: Durable) -> None:
    seen: list[tuple[str, Any, str, str, str]] = []

    def report(ctx: Context) -> str:
        assert ctx.error is not None
        seen.append((ctx.event.name, ctx.event.data, ctx.error.type, ctx.error.message,
                     ctx.error.run_id))
        return "reported"

    @app.function(id="charge", event="card/charge", retries=1, on_failure=report)
    def charge(ctx: Context) -> str:
        if ctx.event.data["ok"]:
            return "charged"
        return str(ctx.step.run("call-bank", lambda: 1 / 0))

    app.start(threads=2)
    good = run_of(app, "card/charge", {"ok": True})
    bad = run_of(app, "card/charge", {"ok": False})
    assert app.wait_for_run(good, 20).status == "completed"
    assert app.wait_for_run(bad, 20).status == "failed"
    [handler] = wait_until(lambda: app.list_runs(function="charge/on-failure"), what="the handler")
    assert app.wait_for_run(handler.id, 20).output == "reported"
    assert seen == [("card/charge", {"ok": False}, "StepError",
                     "step 'call-bank' failed: ZeroDivisionError: division by zero", bad)]
    assert len(app.list_runs(function="charge/on-failure")) == 1  # not for the good run


def test_a_run_not_started_within_its_start_timeout_is_cancelled(app: Durable) -> None:
    @app.function(id="prompt", event="go", timeouts=Timeouts(start="1s"))
    def prompt(ctx: Context) -> str:
        return "ran"

    late = run_of(app, "go")
    time.sleep(1.2)  # no worker up for longer than the start timeout
    app.start(threads=1)
    on_time = run_of(app, "go")
    assert app.wait_for_run(on_time, 20).output == "ran"
    run = app.wait_for_run(late, 20)
    assert run.status == "cancelled" and run.error is not None
    assert (run.error.type, run.error.message) == (
        "TimeoutError", "timeouts.start: the run did not start within 0:00:01")


def test_a_run_past_its_finish_timeout_is_cancelled_at_a_step_boundary(app: Durable) -> None:
    ran: list[str] = []

    @app.function(id="slow", event="slow", timeouts=Timeouts(finish="1s"))
    def slow(ctx: Context) -> None:
        ctx.step.run("long", lambda: time.sleep(1.2) or ran.append("long"))  # the slow work itself
        ctx.step.run("next", lambda: ran.append("next"))

    @app.function(id="sleeper", event="sleepy", timeouts=Timeouts(finish="1s"))
    def sleeper(ctx: Context) -> None:
        ctx.step.sleep("nap", "1h")

    app.start(threads=2)
    for run_id in (run_of(app, "slow"), run_of(app, "sleepy")):
        run = app.wait_for_run(run_id, 20)  # the sleeper is woken at its deadline
        assert run.status == "cancelled" and run.error is not None
        assert run.error.message == "timeouts.finish: the run did not finish within 0:00:01"
    assert ran == ["long"]


def test_cancel_on_never_cancels_a_run_with_its_own_or_an_earlier_event(app: Durable) -> None:
    """A newer update supersedes the run of an older one, not its own."""
    @app.function(id="sync", event="contact/updated",
                  cancel_on=[Cancel(event="contact/updated", match="data.contact_id")])
    def sync(ctx: Context) -> int:
        ctx.step.sleep("settle", "1s")
        return int(ctx.event.data["v"])

    @app.function(id="go", event="go", cancel_on=[Cancel(event="stop", match="data.k")])
    def go(ctx: Context) -> str:
        return "went"

    app.start(threads=2)
    lone = run_of(app, "contact/updated", {"contact_id": 1, "v": 1})
    assert app.wait_for_run(lone, 20).status == "completed"
    older = run_of(app, "contact/updated", {"contact_id": 2, "v": 1})
    newer = run_of(app, "contact/updated", {"contact_id": 2, "v": 2})
    assert app.wait_for_run(older, 20).status == "cancelled"
    assert app.wait_for_run(newer, 20).output == 2

    _, go_after = app.send([Event("stop", {"k": 7}), Event("go", {"k": 7})])
    [kept] = app.runs_for_event(go_after)
    assert app.wait_for_run(kept.id, 20).output == "went"
    go_first, _ = app.send([Event("go", {"k": 8}), Event("stop", {"k": 8})])
    [stopped] = app.runs_for_event(go_first)
    assert app.wait_for_run(stopped.id, 20).status == "cancelled"


def test_timeouts_start_counts_the_time_a_run_waits_prefetched(app: Durable) -> None:
    """One thread, five 2.5 s runs due at once, start="2s": the first starts
    at once (this process sends it to its own idle thread); the others,
    claimed ahead (prefetch), would begin past 2 s and are cancelled."""
    began: list[float] = []

    @app.function(id="slow", event="slow", timeouts=Timeouts(start="2s"))
    def slow(ctx: Context) -> None:
        began.append(time.monotonic())
        time.sleep(2.5)

    app.start(threads=1, prefetch=4)
    ids = app.send([Event("slow", {}) for _ in range(5)])
    runs = [app.wait_for_run(app.runs_for_event(e)[0].id, 30) for e in ids]
    statuses = [r.status for r in runs]
    assert statuses.count("completed") == len(began) == 1, statuses
    for run in runs:
        if run.status == "cancelled":
            assert run.error is not None and run.error.message.startswith("timeouts.start")


@pytest.mark.parametrize("started_by", ["debounce", "replay", "invoke"])
def test_cancel_on_holds_however_a_run_was_started(
    app: Durable, db: psycopg.Connection[Any], started_by: str
) -> None:
    """Issue 22, s4: debounced runs, replays and invoked children listen too."""
    options: dict[str, Any] = {"debounce": Debounce(period="200ms")} if started_by == "debounce" else {}

    @app.function(id="listener", event="go", cancel_on=[Cancel(event="stop", match="data.k")],
                  **options)
    def listener(ctx: Context) -> None:
        ctx.step.sleep("nap", "1h")

    @app.function(id="parent", event="parent")
    def parent(ctx: Context) -> str:
        try:
            ctx.step.invoke("call", function="listener", data={"k": 1})
        except StepError as exc:
            return exc.error_type
        return "not cancelled"

    app.start(threads=2)
    if started_by == "invoke":
        parent_run = run_of(app, "parent")
    else:
        app.send("go", {"k": 1})
    wait_until(lambda: app.list_runs(function="listener", status="sleeping"), what="a sleeping run")
    if started_by == "replay":
        [first] = app.list_runs(function="listener")
        assert app.cancel(first.id)
        app.replay(first.id)
        wait_until(lambda: app.list_runs(function="listener", status="sleeping"),
                   what="the replay to sleep")
    [target] = app.list_runs(function="listener", status="sleeping")
    app.send("stop", {"k": 1})
    assert app.wait_for_run(target.id, 20).status == "cancelled"
    if started_by == "invoke":
        assert app.wait_for_run(parent_run, 20).output == "Cancelled"
    orphans = db.execute(f"SELECT count(*) FROM {app.schema}.waits w WHERE NOT EXISTS "
                         f"(SELECT FROM {app.schema}.runs r WHERE r.id = w.run_id)").fetchone()
    assert orphans == (0,)
