"""The operator's commands: runs, events, functions, workers, doctor; each
for people (tables) and for scripts (--json), with its exit status."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import types
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_until

from pgdurable import Context, Durable
from pgdurable.cli import main


class Cli:
    """`pgdurable ...` in this process, on the test's schema."""

    def __init__(self, dsn: str, schema: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--dsn", dsn, "--schema", schema]
        self.capsys = capsys

    def __call__(self, *arguments: str, status: int = 0) -> str:
        got = main([*arguments, *self.base])
        out, err = self.capsys.readouterr()
        assert got == status, out + err
        return out + err

    def json(self, *arguments: str, status: int = 0) -> Any:
        got = main([*arguments, "--json", *self.base])
        out, err = self.capsys.readouterr()
        assert got == status, out + err
        return json.loads(out)


@pytest.fixture
def cli(dsn: str, schema: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(dsn, schema, capsys)


@pytest.fixture
def shop(app: Durable) -> Iterator[dict[str, str]]:
    """A completed run, a failed one (step 'total'), and a queued one of a
    function no worker serves; the worker stays up."""
    @app.function(id="receipt", event="receipt/uploaded", retries=0)
    def receipt(ctx: Context) -> Any:
        text = ctx.step.run("ocr", lambda: f"text of {ctx.event.data['key']}")
        def total() -> float:
            if ctx.event.data.get("broken"):
                raise ValueError("no total in the text")
            return 12.5
        return {"text": text, "total": ctx.step.run("total", total)}

    ok = run_of(app, "receipt/uploaded", {"key": "a.png"})
    bad = run_of(app, "receipt/uploaded", {"key": "b.png", "broken": True})
    app.start(threads=2, poll_interval=0.1)
    app.wait_for_run(ok, 20), app.wait_for_run(bad, 20)
    idle = Durable(app.conninfo, schema=app.schema)

    @idle.function(id="later", event="later")
    def later(ctx: Context) -> None:
        return None

    queued = run_of(idle, "later")
    idle.stop()
    yield {"ok": ok, "bad": bad, "queued": queued}


def test_runs_list_for_people_and_scripts(cli: Cli, app: Durable, shop: dict[str, str]) -> None:
    listed = cli.json("runs", "list")
    assert listed == [r.to_dict() for r in app.list_runs()]
    assert [r["id"] for r in listed] == [shop["queued"], shop["bad"], shop["ok"]]
    assert [r["id"] for r in cli.json("runs", "list", "--status", "failed")] == [shop["bad"]]
    assert [r["id"] for r in cli.json("runs", "list", "--function", "receipt", "--limit", "1",
                                      "--after", shop["bad"])] == [shop["ok"]]
    assert cli.json("runs", "list", "--since", "1h", "--until", "2000-01-01T00:00:00+00:00") == []
    table = cli("runs", "list", "--limit", "2")
    assert shop["queued"] in table and "failed" in table and shop["ok"] not in table
    assert f"more: --after {shop['bad']}" in table


def test_runs_show_tells_a_failed_runs_story(cli: Cli, shop: dict[str, str]) -> None:
    shown = cli.json("runs", "show", shop["bad"])
    assert shown["status"] == "failed" and shown["error"]["type"] == "StepError"
    assert "Traceback" in shown["error"]["traceback"]
    assert [(s["key"], s["status"], s["attempts"]) for s in shown["steps"]] == [
        ("ocr", "completed", 1), ("total", "failed", 1)]
    assert shown["steps"][0]["output"] == "text of b.png"
    assert shown["steps"][1]["error"]["message"] == "no total in the text"
    text = cli("runs", "show", shop["bad"])
    assert "ValueError: no total in the text" in text and "raise ValueError" in text
    assert "no run with id" in cli("runs", "show", "01a22d06-e0e5-7a71-bbcf-c3710d241c7a", status=3)


def test_runs_fork_and_replay_are_audited_as_the_cli(
    cli: Cli, app: Durable, shop: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    forked = cli.json("runs", "fork", shop["bad"], "--from-step", "total",
                      "--data", '{"key": "c.png"}')["run_id"]
    run = app.wait_for_run(forked, 20)
    assert (run.forked_from, run.output) == (shop["bad"], {"text": "text of b.png", "total": 12.5})
    replayed = cli("runs", "replay", shop["ok"]).strip()
    assert app.wait_for_run(replayed, 20).output == {"text": "text of a.png", "total": 12.5}
    assert "has no step 'nope'" in cli("runs", "fork", shop["bad"], "--from-step", "nope", status=3)
    who = db.execute(f"SELECT DISTINCT who FROM {app.schema}.operator_audit").fetchall()
    assert len(who) == 1 and who[0][0].startswith("cli:")


def test_bulk_cancel_counts_asks_and_can_be_dry(
    cli: Cli, app: Durable, shop: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = Durable(app.conninfo, schema=app.schema)

    @extra.function(id="later", event="later")
    def later(ctx: Context) -> None:
        return None

    more = [run_of(extra, "later") for _ in range(2)]
    extra.stop()
    assert cli.json("runs", "cancel", "--function", "later", "--dry-run") == {
        "matched": 3, "done": 0, "dry_run": True}
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert "aborted: nothing done" in cli("runs", "cancel", "--function", "later", status=1)
    assert {app.get_run(r).status for r in [shop["queued"], *more]} == {"queued"}  # type: ignore[union-attr]
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    out = cli("runs", "cancel", "--function", "later")
    assert "3 runs match" in out and "cancel: 3 of 3 runs" in out
    assert {app.get_run(r).status for r in [shop["queued"], *more]} == {"cancelled"}  # type: ignore[union-attr]
    # finished runs are not selected again; a bare command selects nothing
    assert cli.json("runs", "cancel", "--function", "later", "--yes")["matched"] == 0
    assert "give run ids, or filters" in cli("runs", "cancel", status=2)


def test_events_list_show_and_send(
    cli: Cli, app: Durable, shop: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = cli.json("events", "list", "--name", "receipt/uploaded")
    assert [e["data"]["key"] for e in events] == ["b.png", "a.png"]
    shown = cli.json("events", "show", events[1]["id"])
    assert [r["id"] for r in shown["runs"]] == [shop["ok"]]
    assert "no event with id" in cli("events", "show", "nope", status=3)

    module = types.ModuleType("cli_test_app")
    module.app = app  # type: ignore[attr-defined]  # the app whose functions an event triggers
    monkeypatch.setitem(sys.modules, "cli_test_app", module)
    # the app (its DSN and functions) is the one at --app
    assert main(["events", "send", "receipt/uploaded", '{"key": "d.png"}', "--app",
                 "cli_test_app:app", "--id", "upload-d", "--json"]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["event_id"] == "upload-d" and len(sent["run_ids"]) == 1
    assert app.wait_for_run(sent["run_ids"][0], 20).output["text"] == "text of d.png"
    assert main(["events", "send", "x", "{", "--app", "cli_test_app:app"]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_functions_workers_and_doctor(cli: Cli, app: Durable, shop: dict[str, str]) -> None:
    [function] = cli.json("functions")
    assert (function["id"], function["events"], function["live_workers"]) == (
        "receipt", ["receipt/uploaded"], 1)
    [worker] = cli.json("workers")
    assert worker["live"] is True and worker["threads"] == 2 and worker["functions"] == ["receipt"]
    assert "receipt" in cli("functions") and worker["id"] in cli("workers")

    checks = {c["name"]: c for c in cli.json("doctor", status=1)}
    assert checks["schema"]["verdict"] == "ok"
    assert checks["unserved functions"]["verdict"] == "problem"
    assert "later (1 runs)" in checks["unserved functions"]["found"]
    assert "problem" in cli("doctor", status=1)
    app.cancel(shop["queued"])
    assert {c["verdict"] for c in cli.json("doctor")} <= {"ok", "warning"}


def test_doctor_on_a_schema_not_migrated(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json", "--dsn", dsn, "--schema", "t_never_migrated"]) == 1
    [check] = json.loads(capsys.readouterr().out)
    assert (check["name"], check["verdict"]) == ("schema", "problem")
    assert "pgdurable migrate" in check["advice"]


def test_an_unreachable_database_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    got = main(["runs", "list", "--dsn", "postgresql://postgres@127.0.0.1:1/x?connect_timeout=1"])
    assert got == 4
    assert "cannot connect" in capsys.readouterr().err


def test_doctor_sees_a_stale_worker_backlog(cli: Cli, app: Durable, db: psycopg.Connection[Any],
                                            shop: dict[str, str]) -> None:
    db.execute(f"UPDATE {app.schema}.queue SET available_at = now() - interval '2 hours'")
    checks = {c["name"]: c for c in cli.json("doctor", status=1)}
    assert checks["backlog"]["verdict"] == "warning" and "2.0 h" in checks["backlog"]["found"]


def test_dashboard_serves_the_pages_alone(dsn: str, schema: str, app: Durable) -> None:
    """`pgdurable dashboard` runs the dashboard on its own port, under a prefix."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "pgdurable", "dashboard", "--dsn", dsn, "--schema", schema,
         "--port", str(port), "--root-path", "/ops"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def answer() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as got:
                    return json.loads(got.read())
            except OSError:
                return None

        health = wait_until(answer, 30, "the dashboard to answer")
        assert (health["ok"], health["ready"], health["live_workers"]) == (True, True, 0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=5) as page:
            text = page.read().decode()
        assert "read-only" in text and f"http://127.0.0.1:{port}/ops/static/style.css" in text
    finally:
        server.terminate()
        server.wait(10)
