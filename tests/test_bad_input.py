"""Bad input from handler code and senders fails what it belongs to, and
nothing else (issue 22, sections 10, 11 and 15)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from conftest import run_of, status_of

from pgdurable import Cancel, ConfigurationError, Context, Durable, InvalidEventError
from pgdurable._journal import Journal
from pgdurable._network import Outage
from pgdurable._records import Finish, StepRecord
from pgdurable._store import check_schema_name
from pgdurable.testing import internals


@pytest.mark.parametrize(("step_id", "problem"), [
    ("summary-" + "k" * 3000, "longer than 512 characters"),
    ("lone-\udc80-surrogate", "unpaired surrogate"),
    ("nul-\x00-inside", "NUL"),
])
def test_a_bad_step_id_fails_its_run_and_no_other(app: Durable, step_id: str, problem: str) -> None:
    @app.function(id="bad", event="bad")
    def bad(ctx: Context) -> None:
        ctx.step.run(step_id, lambda: None)

    @app.function(id="good", event="good")
    def good(ctx: Context) -> str:
        return str(ctx.step.run("fine", lambda: "fine"))

    app.start(threads=2)
    bad_run, good_run = run_of(app, "bad"), run_of(app, "good")
    failed = app.wait_for_run(bad_run, 20)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.type == "NonRetriableError" and problem in failed.error.message
    assert app.wait_for_run(good_run, 20).output == "fine"


def test_a_nul_in_a_wait_event_name_fails_the_run(app: Durable) -> None:
    @app.function(id="waits", event="go", retries=0)
    def waits(ctx: Context) -> None:
        ctx.step.wait_for_event("w", event="ap\x00proval")

    app.start(threads=1)
    run = app.wait_for_run(run_of(app, "go"), 20)
    assert run.status == "failed" and run.error is not None and "NUL" in run.error.message


@pytest.mark.parametrize("message", ["with a \x00 NUL", "with the text \\u0000", "lone \udc80"])
def test_an_exception_of_any_text_fails_the_run_and_the_thread_lives(
    app: Durable, message: str
) -> None:
    @app.function(id="raises", event="raise", retries=1)
    def raises(ctx: Context) -> None:
        ctx.step.run("boom", lambda: (_ for _ in ()).throw(ValueError(message)))

    @app.function(id="after", event="after")
    def after(ctx: Context) -> str:
        return "alive"

    app.start(threads=1)  # one executor: it must survive for the next run
    failed = app.wait_for_run(run_of(app, "raise"), 20)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message.startswith("step 'boom' failed: ValueError: ")
    assert app.wait_for_run(run_of(app, "after"), 20).output == "alive"


def test_a_refused_journal_entry_fails_its_run_not_the_batch(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """Journal entries that get past the checks and are refused by Postgres
    (here a key with a surrogate, as no step id can be any more) fail their
    own run; the other runs of the batch are written."""
    app.function(id="f", event="e")(lambda ctx: None)
    runs = [run_of(app, "e") for _ in range(3)]
    with app.connection() as conn:
        claimed = {r.id: r for r in internals(app).store.claim_runs(conn, "w", ["f"], 3, app.lease)}
    now = datetime.now(UTC)

    def entry(run_id: str, key: str) -> StepRecord:
        return StepRecord(run_id, claimed[run_id].token, key, 1, "completed", "1", None, 1, now)

    journal = Journal(internals(app).pool, internals(app).store, Outage("test"))
    journal.start()
    try:
        checkpoint = journal.submit(
            [entry(runs[0], "ok"), entry(runs[1], "bad-\udc80"), entry(runs[2], "ok")],
            [Finish(r, claimed[r].token, "completed", "2") for r in (runs[0], runs[2])],
        ).result(20)
    finally:
        journal.stop(5)
    assert runs[1] in checkpoint.cancelled  # its handler stops at its next step
    assert [status_of(app, r) for r in runs] == ["completed", "failed", "completed"]
    failed = app.get_run(runs[1])
    assert failed is not None and failed.error is not None
    assert failed.error.type == "JournalWriteError"
    assert db.execute(f"SELECT count(*) FROM {app.schema}.steps").fetchone() == (2,)


@pytest.mark.parametrize("text", ["C:\\u0000dir", "\\\\u0000", "x\\\\\\u0000"])
def test_text_that_looks_like_a_nul_escape_comes_back_as_sent(app: Durable, text: str) -> None:
    @app.function(id="echo", event="echo")
    def echo(ctx: Context) -> dict[str, Any]:
        return {"event": ctx.event.data["p"], "step": ctx.step.run("s", lambda: text)}

    app.start(threads=1)
    run = app.wait_for_run(run_of(app, "echo", {"p": text}), 20)
    assert run.output == {"event": text, "step": text}


def test_a_real_nul_is_still_refused(app: Durable) -> None:
    with pytest.raises(InvalidEventError, match="NUL"):
        app.send("echo", {"p": "a\x00b"})


def test_a_bad_if_literal_in_cancel_on_is_refused_at_registration(app: Durable) -> None:
    with pytest.raises(ConfigurationError, match="'01' is not a number"):
        app.function(id="f", event="e", cancel_on=[Cancel(event="x", if_="async.n == 01")])(
            lambda ctx: None)
    assert "f" not in app._functions


@pytest.mark.parametrize("name", ["pgdurable\n", "ok_name\n"])
def test_a_trailing_newline_is_not_a_schema_name(name: str) -> None:
    with pytest.raises(ConfigurationError, match="not a valid name"):
        check_schema_name(name)


def test_a_trailing_newline_is_not_a_function_id(app: Durable) -> None:
    with pytest.raises(ConfigurationError, match="function id 'f\\\\n' is invalid"):
        app.function(id="f\n", event="e")(lambda ctx: None)
