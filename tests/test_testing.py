"""pgdurable.testing.execute: a run to its end at once, steps given in
place of their functions; and the pytest plugin's fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pgdurable import AsyncContext, Context, Durable, Event, NonRetriableError
from pgdurable.testing import StuckRunError, execute

# A day, a week: what a test must not wait for. Each run below ends long
# before either (the bound is loose for a loaded machine; bench figures in
# the notes).
WELL_BEFORE = 10.0


def test_a_day_s_sleep_passes_at_once_and_the_journal_stays(app: Durable) -> None:
    @app.function(id="reminder", event="trial/started")
    def reminder(ctx: Context) -> str:
        ctx.step.sleep("trial", "1d")
        ctx.step.sleep_until("next-week", ctx.event.ts.replace(year=ctx.event.ts.year + 1))
        return str(ctx.step.run("mail", lambda: f"over for {ctx.event.data['user']}"))

    began = time.monotonic()
    run = execute(app, "reminder", {"user": "ada"})
    assert time.monotonic() - began < WELL_BEFORE
    assert (run.status, run.output) == ("completed", "over for ada")
    assert [(s.key, s.status) for s in app.get_steps(run.id)] == [
        ("trial", "completed"), ("next-week", "completed"), ("mail", "completed")]


def test_a_given_step_is_never_called_and_the_others_run_for_real(app: Durable) -> None:
    called: list[str] = []

    @app.function(id="receipt", event="receipt/process")
    def receipt(ctx: Context) -> dict[str, Any]:
        data = ctx.step.run("download", lambda: called.append("download") or b"jpg".hex())
        text = ctx.step.run("ocr", lambda: called.append("ocr") or {"total": 0})
        return {"file": data, "total": text["total"]}

    run = execute(app, "receipt", {"file_key": "k"}, steps={"ocr": {"total": 12.5}})
    assert (run.status, run.output) == ("completed", {"file": "6a7067", "total": 12.5})
    assert called == ["download"]
    steps = {s.key: (s.output, s.attempts) for s in app.get_steps(run.id)}
    assert steps == {"download": ("6a7067", 1), "ocr": ({"total": 12.5}, 0)}  # 0: given


def test_a_wait_gets_the_given_event_or_times_out_at_once(app: Durable) -> None:
    @app.function(id="approval", event="order/placed")
    def approval(ctx: Context) -> Any:
        approved = ctx.step.wait_for_event("approved", event="order/approved", timeout="7d",
                                           match="data.order")
        return None if approved is None else approved.data["by"]

    given = execute(app, "approval", {"order": 1},
                    steps={"approved": Event("order/approved", {"order": 1, "by": "bob"})})
    timed_out = execute(app, "approval", {"order": 2})
    assert (given.status, given.output) == ("completed", "bob")
    assert (timed_out.status, timed_out.output) == ("completed", None)


def test_a_retry_backs_off_at_once_and_an_error_ends_the_run_as_in_production(app: Durable) -> None:
    attempts: list[int] = []

    @app.function(id="flaky", event="flaky", retries=3)
    def flaky(ctx: Context) -> int:
        def call() -> int:
            attempts.append(ctx.attempt)
            if len(attempts) < 3:
                raise ConnectionError("503 from the OCR service")
            return len(attempts)

        return int(ctx.step.run("call", call))

    def check() -> None:
        raise NonRetriableError("bad receipt")

    @app.function(id="refused", event="refused")
    def refused(ctx: Context) -> None:
        ctx.step.run("check", check)

    began = time.monotonic()
    run = execute(app, "flaky")  # backoff from 1 s: minutes of waiting, passed at once
    assert time.monotonic() - began < WELL_BEFORE
    assert (run.status, run.output, attempts) == ("completed", 3, [0, 1, 2])
    failed = execute(app, "refused")
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.type, failed.error.message) == (
        "StepError", "step 'check' failed: NonRetriableError: bad receipt")


def test_an_invoke_returns_the_given_output_or_runs_the_child_for_real(app: Durable) -> None:
    children: list[int] = []

    @app.function(id="score", event="lead/score")
    def score(ctx: Context) -> float:
        ctx.step.run("count", children.append, ctx.event.data["n"])
        ctx.step.sleep("think", "1h")
        return 0.5 * ctx.event.data["n"]

    @app.function(id="nudge", event="lead/nudge")
    def nudge(ctx: Context) -> float:
        return float(ctx.step.invoke("score", function=score, data={"n": 3}, timeout="1d"))

    given = execute(app, "nudge", steps={"score": 0.9})
    real = execute(app, "nudge")
    assert (given.output, real.output, children) == (0.9, 1.5, [3])


def test_an_async_function_runs_to_its_end_the_same_way(app: Durable) -> None:
    @app.function(id="summarize", event="file/uploaded")
    async def summarize(ctx: AsyncContext) -> str:
        await ctx.step.sleep("queue-for-a-day", "1d")
        text = await ctx.step.run("llm", lambda: "never called")
        return f"{ctx.event.data['name']}: {text}"

    run = execute(app, "summarize", {"name": "a.pdf"}, steps={"llm": "a summary"})
    assert (run.status, run.output) == ("completed", "a.pdf: a summary")


def test_a_wait_with_no_timeout_and_no_given_event_is_stuck_not_hung(app: Durable) -> None:
    @app.function(id="forever", event="forever")
    def forever(ctx: Context) -> None:
        ctx.step.wait_for_event("signal", event="never/sent")

    with pytest.raises(StuckRunError, match="step 'signal' for 'never/sent'"):
        execute(app, "forever", timeout=60)


def test_bad_arguments_are_refused_before_anything_runs(app: Durable) -> None:
    app.function(id="f", event="e")(lambda ctx: None)
    with pytest.raises(Exception, match="no function 'missing'"):
        execute(app, "missing")
    with pytest.raises(Exception, match="must be a dict"):
        execute(app, "f", ["not", "a", "dict"])
    with pytest.raises(Exception, match="is not a step id"):
        execute(app, "f", steps={5: "x"})  # type: ignore[dict-item]
    assert app.list_runs() == []


def test_the_pytest_plugin_runs_a_user_s_app_on_a_fresh_schema(tmp_path: Path, dsn: str) -> None:
    """A user's project: its app module, an ini naming it, and a test that
    uses the plugin's fixture (the plugin loads from the installed package's
    entry point, as in any project that installs pgdurable)."""
    (tmp_path / "jobs.py").write_text(textwrap.dedent('''
        from pgdurable import Context, Durable

        app = Durable("postgresql://nowhere.invalid/prod", schema="prod")

        @app.function(id="welcome", event="user/created")
        def welcome(ctx: Context) -> str:
            ctx.step.sleep("grace", "3d")
            return ctx.step.run("mail", lambda: "sent to " + ctx.event.data["email"])
    '''))
    (tmp_path / "pytest.ini").write_text("[pytest]\npgdurable_app = jobs:app\n")
    (tmp_path / "test_jobs.py").write_text(textwrap.dedent('''
        from pgdurable.testing import execute

        def test_welcome(pgdurable_app):
            assert pgdurable_app.schema != "prod"
            run = execute(pgdurable_app, "welcome", {"email": "ada@example.com"},
                          steps={"mail": "mocked"})
            assert (run.status, run.output) == ("completed", "mocked")
            assert [s.key for s in pgdurable_app.get_steps(run.id)] == ["mail", "grace"]  # given first
    '''))
    env = {**os.environ, "PGDURABLE_TEST_DSN": dsn}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
