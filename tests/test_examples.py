"""The examples run as documented, against the test server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from pgdurable import Event
from pgdurable.embedded import _free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import clips  # noqa: E402
import context_files  # noqa: E402
import fork_fix  # noqa: E402
import metrics  # noqa: E402
import notifications  # noqa: E402
import onboarding  # noqa: E402
import receipts  # noqa: E402
import sql_sends  # noqa: E402
import tracing  # noqa: E402


def test_receipts_fan_out_and_retry_ocr(dsn: str, schema: str) -> None:
    app = receipts.build(dsn, schema, failure_rate=0.5)
    try:
        app.migrate()
        event_ids = receipts.upload(app, "u1", 12)
        app.start(threads=4, poll_interval=0.2)
        runs = [app.wait_for_run(r.id, 120) for e in event_ids for r in app.runs_for_event(e)]
    finally:
        app.stop()
    assert len(runs) == 12
    assert {r.status for r in runs} <= {"completed", "failed"}
    completed = [r for r in runs if r.status == "completed"]
    assert len(completed) >= 6  # at 50% failure and 4 retries, nearly all complete
    assert {r.output["file"] for r in completed} <= {f"receipt-{n:02}.jpg" for n in range(1, 13)}


def test_receipts_reject_bad_uploads(dsn: str, schema: str) -> None:
    app = receipts.build(dsn, schema)
    try:
        app.migrate()
        with pytest.raises(ValueError, match="original_name"):
            app.send("receipt/process", {"user_id": "u", "file_key": "k"})
    finally:
        app.stop()


def test_context_file_is_parsed_and_stored(dsn: str, schema: str) -> None:
    app = context_files.build(dsn, schema)
    try:
        app.migrate()
        context_files.create_tables(app)
        file_id = context_files.upload_file(app, "notes.md", "First point. Second point.", "c", "u")
        app.start(threads=1, poll_interval=0.2)
        [run] = app.list_runs(function="process-context-file")
        assert app.wait_for_run(run.id, 60).output == {"success": True, "file_id": file_id}
        with psycopg.connect(dsn) as conn:
            row = conn.execute(f"SELECT summary, key_points FROM {schema}.context_files").fetchone()
            audit = conn.execute(f"SELECT kind, tag, run_id::text, step_key FROM {schema}.rls_audit "
                                 "ORDER BY at").fetchall()
        assert row == ("notes.md: First point", ["First point", "Second point"])
        assert audit == [("bypass", context_files.BYPASS_TAG, run.id, step)
                         for step in ("fetch-file", "store-result")]
    finally:
        app.stop()


def test_clips_call_the_api_and_save_results(dsn: str, schema: str) -> None:
    api = clips.start_fake_api()
    app = clips.build(dsn, f"http://127.0.0.1:{api.server_port}/identify", schema)
    try:
        app.migrate()
        clips.create_tables(app)
        [event_id] = app.send("video/identify.clips", {"user_id": "u", "youtube_url": "https://x"})
        [run] = app.runs_for_event(event_id)
        assert clips.video_status(app, run.id) == {"status": "queued"}
        app.start(threads=2, poll_interval=0.2)
        app.wait_for_run(run.id, 60)
        status: dict[str, Any] = clips.video_status(app, run.id)
        assert status["status"] == "completed" and status["total_clips"] == 3
        with psycopg.connect(dsn) as conn:
            videos = conn.execute(f"SELECT count(*) FROM {schema}.videos").fetchone()
            saved = conn.execute(f"SELECT count(*) FROM {schema}.clips").fetchone()
        assert (videos, saved) == ((1,), (3,))  # steps ran once despite 503 retries
    finally:
        app.stop()
        api.shutdown()


def test_receipts_demo_runs_from_the_command_line(dsn: str, schema: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "receipts.py"), "3"],
        env={"PGDURABLE_DSN": dsn, "PGDURABLE_SCHEMA": schema, "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "uploaded 3 receipts" in result.stdout
    assert "/3 completed" in result.stdout


def test_onboarding_sleeps_waits_invokes_and_sends_once(dsn: str, schema: str) -> None:
    app, outbox = onboarding.build(dsn, schema, grace="200ms", patience="1s")
    try:
        app.migrate()
        app.start(threads=4)
        ids = app.send([Event("user/signed-up", {"user_id": u, "email": f"{u}@example.com"})
                        for u in ("u1", "u2")])
        onboarding.activate_when_sleeping(app, ids[0], "u1")
        outputs = [app.wait_for_run(r.id, 60).output for e in ids for r in app.runs_for_event(e)]
        wait_until(lambda: len(outbox) == 3, what="three emails")
    finally:
        app.stop()
    assert outputs == ["activated", f"nudged (lead score {len('u2@example.com') % 10})"]
    assert sorted((m["to"], m["kind"]) for m in outbox) == [
        ("u1@example.com", "welcome"), ("u2@example.com", "nudge"), ("u2@example.com", "welcome")]


def test_notifications_batch_cancel_fail_and_tick(dsn: str, schema: str) -> None:
    app, outbox = notifications.build(dsn, schema, trial="300ms")
    try:
        app.migrate()
        app.start(threads=4)
        trials = notifications.send_demo_events(app)
        statuses = [app.wait_for_run(r.id, 60).status for e in trials for r in app.runs_for_event(e)]
        wait_until(lambda: len(outbox) >= 5, what="every email")
        wait_until(lambda: len(app.list_runs(function="housekeeping")) >= 2, what="two cron ticks")
    finally:
        app.stop()
    assert len(outbox) == 5, outbox
    assert statuses == ["completed", "cancelled"]  # bob was deleted during his trial
    digests = sorted((m["to"], len(m["comments"])) for m in outbox if m["kind"] == "digest")
    assert digests == [("ann", 2), ("ann", 5), ("bob", 2)]
    others = sorted((m for m in outbox if m["kind"] != "digest"), key=lambda m: m["kind"])
    assert others == [
        {"to": "bob", "kind": "payment-failed",
         "reason": "step 'call-bank' failed: NonRetriableError: card declined"},
        {"to": "ann", "kind": "trial-over"},
    ]


def test_fork_fix_goes_on_from_the_failed_step(dsn: str, schema: str) -> None:
    app, calls, fixed = fork_fix.build(dsn, schema)
    try:
        app.migrate()
        app.start(threads=2, poll_interval=0.2)
        failed, forked = fork_fix.fail_then_fork(app, fixed)
    finally:
        app.stop()
    assert failed.status == "failed" and failed.error is not None
    assert "could not convert string to float" in failed.error.message
    assert (forked.status, forked.output) == ("completed", {"total": 12.5})
    assert calls == {"ocr": 1, "total": 2}


def test_tracing_dumps_one_runs_trace(dsn: str, schema: str) -> None:
    """The request, its send, and two attempts linked to the send, each with
    the steps it executed (the second takes `download` from the journal)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lines = tracing.trace_one(tracing.build(dsn, provider, schema), provider, exporter)
    assert lines == [
        "POST /receipts",
        "  send receipt/process",
        "run process-receipt  (attempt 0; linked to 'send receipt/process'; pgdurable.suspend)",
        "  step download",
        "  step ocr  (ERROR: ValueError: OCR service busy)",
        "run process-receipt  (attempt 1; linked to 'send receipt/process')",
        "  step ocr",
    ]


def test_metrics_are_served_to_prometheus(dsn: str, schema: str) -> None:
    """Four receipts, one failing after a retry: the counters Prometheus
    scrapes say so, and the queue and threads gauges are there."""
    port = _free_port()
    lines = metrics.scrape(metrics.build(dsn, metrics.serve(port), schema), port)
    samples = {}
    for line in lines:
        name, _, value = line.rpartition(" ")
        labels = dict(re.findall(r'(pgdurable_\w+)="([^"]*)"', name))
        samples[(name.partition("{")[0], *sorted(labels.values()))] = float(value)
    receipt = "process-receipt"
    assert samples[("pgdurable_runs_started_total", receipt)] == 5
    assert samples[("pgdurable_runs_finished_total", "completed", receipt)] == 3
    assert samples[("pgdurable_runs_finished_total", "failed", receipt)] == 1
    assert samples[("pgdurable_runs_retries_total", receipt)] == 1
    assert samples[("pgdurable_steps_duration_seconds_count", receipt)] == 9
    assert samples[("pgdurable_runs_start_lag_seconds_count", receipt)] == 5
    assert samples[("pgdurable_journal_batch_size_sum",)] >= 14
    assert samples[("pgdurable_queue_oldest_ready_age_seconds",)] == 0
    assert samples[("pgdurable_worker_threads", "busy")] + samples[
        ("pgdurable_worker_threads", "idle")] == 2


def test_sql_sends_start_runs_from_a_table_trigger_and_from_plain_sql(dsn: str, schema: str) -> None:
    app, outbox = sql_sends.build(dsn, schema)
    try:
        table = sql_sends.install(app)
        app.start(threads=2, poll_interval=0.2)
        sql_sends.admin_inserts(dsn, table, ["ada@example.com", "bob@example.com", "ada@example.com"])
        event_id = sql_sends.script_sends(dsn, schema, "bob@example.com", "pro")
        wait_until(lambda: len(outbox) == 3, what="two welcomes and an upgrade")
        [upgrade] = app.runs_for_event(event_id)
        assert app.wait_for_run(upgrade.id, timeout=30).output == "pro"
    finally:
        app.stop()
    assert sorted((m["to"], m["kind"]) for m in outbox) == [
        ("ada@example.com", "welcome"), ("bob@example.com", "pro"), ("bob@example.com", "welcome")]
    assert len(app.list_runs(function="welcome")) == 2  # ada's second row: the same key
