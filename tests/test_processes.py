"""Worker processes: killed mid-step, several at once, stopped by signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import WorkerProcess, memory_tracing, wait_until

from pgdurable import Batch, Durable, Event
from pgdurable.embedded import EmbeddedPostgres, _free_port, _system_bindir


@pytest.fixture
def tables(app: Durable, db: psycopg.Connection[Any]) -> Durable:
    db.execute(f"CREATE TABLE {app.schema}.effects (run_id uuid, what text)")
    db.execute(f"CREATE TABLE {app.schema}.flags (name text)")
    # The sender must know the functions to fan out; register the same ids.
    for fid, event in (("two-steps", "test/two-steps"), ("count-once", "test/count-once"),
                       ("sleep-then-wait", "test/sleep-then-wait"),
                       ("parallel-kill", "test/parallel-kill")):
        app.function(id=fid, event=event)(lambda ctx: None)
    return app


def effects(db: psycopg.Connection[Any], schema: str, run_id: str | None = None) -> dict[str, int]:
    rows = db.execute(
        f"SELECT what, count(*) FROM {schema}.effects "
        "WHERE %s::uuid IS NULL OR run_id = %s::uuid GROUP BY what", (run_id, run_id))
    return dict(rows.fetchall())


def start_in_step_two(
    app: Durable, db: psycopg.Connection[Any], worker_process: Any, **env: str
) -> tuple[Any, Any]:
    """A worker process running a two-step run, blocked inside step two."""
    [event_id] = app.send("test/two-steps", {})
    [run] = app.runs_for_event(event_id)
    worker = worker_process(**env)
    wait_until(lambda: effects(db, app.schema, run.id).get("two-start"), what="step two to start")
    return run, worker


def test_run_survives_sigkill_mid_step(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = tables
    run, doomed = start_in_step_two(app, db, worker_process)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(10)
    db.execute(f"INSERT INTO {app.schema}.flags VALUES ('release')")
    worker_process()
    done = app.wait_for_run(run.id, timeout=60)
    assert (done.status, done.output) == ("completed", "done")
    counts = effects(db, app.schema, run.id)
    assert counts["one"] == 1  # completed before the kill: never again
    assert counts["two-start"] == 2  # interrupted: executed again
    assert counts["two-end"] == 1


def test_the_trace_survives_a_crash(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any,
    make_app: Callable[..., Durable], tmp_path: Path,
) -> None:
    """The worker that resumes a run killed mid-step links its attempt to
    the same send span, from the context stored with the event; the step
    done before the kill emits no span again."""
    pytest.importorskip("opentelemetry.sdk.trace")
    provider, exporter = memory_tracing()
    sender = make_app(tracer_provider=provider)
    sender.function(id="two-steps", event="test/two-steps")(lambda ctx: None)
    run, doomed = start_in_step_two(sender, db, worker_process,
                                    PGDURABLE_TEST_TRACE_FILE=str(tmp_path / "doomed.jsonl"))
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(10)
    db.execute(f"INSERT INTO {tables.schema}.flags VALUES ('release')")
    worker_process(PGDURABLE_TEST_TRACE_FILE=str(tmp_path / "heir.jsonl"))
    assert sender.wait_for_run(run.id, timeout=60).status == "completed"
    [send] = exporter.get_finished_spans()
    send_id = f"0x{send.context.span_id:016x}"

    def spans(name: str) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for line in (tmp_path / name).read_text().splitlines():
            span = json.loads(line)
            found.setdefault(span["name"], []).append(span)
        return found

    doomed_spans, heir = spans("doomed.jsonl"), spans("heir.jsonl")
    assert set(doomed_spans) == {"step one"}  # its run span never ended: killed
    [resumed] = heir["run two-steps"]
    assert [link["context"]["span_id"] for link in resumed["links"]] == [send_id]
    assert resumed["context"]["span_id"] != doomed_spans["step one"][0]["parent_id"]
    assert set(heir) == {"run two-steps", "step two"}  # step one came from the journal
    assert heir["step two"][0]["parent_id"] == resumed["context"]["span_id"]


def test_a_cancel_requested_before_its_worker_dies_ends_cancelled(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    """Section 6 of issue 22: not `failed` with WorkerLostError, and no on_failure."""
    app = tables
    app.function(id="cancel-then-die", event="test/cancel-then-die", retries=0)(lambda ctx: None)
    [event_id] = app.send("test/cancel-then-die", {})
    [run] = app.runs_for_event(event_id)
    doomed = worker_process()
    wait_until(lambda: effects(db, app.schema, run.id).get("two-start"), what="step two to start")
    assert app.cancel(run.id) is True
    doomed.kill()
    worker_process()
    done = app.wait_for_run(run.id, timeout=60)
    assert done.status == "cancelled" and done.error is not None
    assert done.error.message == "cancelled by request"
    wait_until(lambda: not app.list_runs(status="queued") and not app.list_runs(status="running"),
               what="nothing left to run")
    assert "on-failure" not in effects(db, app.schema)


def test_a_replay_after_sigkill_reruns_only_unfinished_parallel_steps(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = tables
    [event_id] = app.send("test/parallel-kill", {})
    [run] = app.runs_for_event(event_id)
    doomed = worker_process()
    wait_until(lambda: effects(db, app.schema, run.id).get("blocked-start") and db.execute(
        f"SELECT 1 FROM {app.schema}.steps WHERE run_id = %s AND step_key = 'quick' "
        "AND status = 'completed'", (run.id,)).fetchone(), what="one branch journaled")
    doomed.kill()
    db.execute(f"INSERT INTO {app.schema}.flags VALUES ('release')")
    worker_process()
    done = app.wait_for_run(run.id, timeout=60)
    assert (done.status, done.output) == ("completed", ["quick", "blocked"])
    assert effects(db, app.schema, run.id) == {"quick": 1, "blocked-start": 2}


def test_batches_across_processes_lose_and_double_no_event(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = tables
    app.function(id="batched", event="test/batched", batch=Batch(10, "1s", key="data.k"))(
        lambda ctx: None)
    for _ in range(3):
        worker_process(threads=2, PGDURABLE_TEST_BATCH="1")
    sent: list[str] = []

    def sender(n: int) -> None:
        for size in range(1, 26):
            sent.extend(app.send([Event("test/batched", {"k": (n + i) % 4}) for i in range(size % 9 + 1)]))

    senders = [threading.Thread(target=sender, args=(n,)) for n in range(3)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(60)
    wait_until(lambda: sum(effects(db, app.schema).values()) >= len(sent), timeout=60,
               what="every event handled")
    handled = effects(db, app.schema)
    assert set(handled) == set(sent) and set(handled.values()) == {1}
    in_runs = db.execute(f"SELECT unnest(event_ids) FROM {app.schema}.runs").fetchall()
    assert sorted(e for (e,) in in_runs) == sorted(sent)  # each in exactly one batch


def test_a_worker_killed_while_runs_sleep_and_wait_loses_nothing(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app, runs = tables, 40
    app.send([Event("test/sleep-then-wait", {"n": n}) for n in range(runs)])
    doomed = worker_process()

    def parked() -> bool:
        return (len(app.list_runs(status="sleeping")) + len(app.list_runs(status="waiting"))) == runs

    wait_until(parked, what="every run asleep")
    doomed.kill()  # SIGKILL while they sleep (or, the first ones, already wait)
    survivor = worker_process()
    wait_until(lambda: len(app.list_runs(status="waiting")) == runs, what="every run waiting")
    survivor.kill()  # and again while they wait
    app.send([Event("test/go", {"n": n}) for n in range(runs)])  # delivered with no worker up
    worker_process()
    outputs = sorted(app.wait_for_run(r.id, 60).output for r in app.list_runs(limit=1000)
                     if r.function_id == "sleep-then-wait")
    assert outputs == list(range(runs))
    assert effects(db, app.schema) == {"before": runs, "after": runs}


def test_three_processes_complete_each_run_exactly_once(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = tables
    app.send([Event("test/count-once", {"n": i}) for i in range(2000)])
    for _ in range(3):
        worker_process(threads=4)
    wait_until(
        lambda: not app.list_runs(status="queued", limit=1) and not app.list_runs(status="running", limit=1),
        timeout=180, what="all runs to finish")
    statuses = db.execute(f"SELECT status, count(*) FROM {app.schema}.run_state GROUP BY status").fetchall()
    assert statuses == [("completed", 2000)]
    row = db.execute(
        f"SELECT count(*), count(DISTINCT run_id) FROM {app.schema}.effects").fetchone()
    assert row == (2000, 2000)
    workers = db.execute(f"SELECT count(DISTINCT worker_id) FROM {app.schema}.results").fetchone()
    assert workers is not None and workers[0] >= 2  # the work was shared


def test_sigterm_drains_the_worker(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = tables
    run, worker = start_in_step_two(app, db, worker_process)
    worker.proc.send_signal(signal.SIGTERM)
    db.execute(f"INSERT INTO {app.schema}.flags VALUES ('release')")
    worker.proc.wait(60)
    assert worker.proc.returncode == 0
    done = app.get_run(run.id)
    assert done is not None and done.status == "completed"
    assert effects(db, app.schema, run.id)["two-start"] == 1


@pytest.mark.skipif(_system_bindir() is None, reason="needs the system's PostgreSQL binaries")
def test_worker_waits_for_postgres_and_recovers(worker_process: Any, schema: str) -> None:
    folder = tempfile.mkdtemp(prefix="pgdurable-late-")
    os.chmod(folder, 0o755)
    port = _free_port()
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    worker = WorkerProcess(dsn, schema, threads=2, PGDURABLE_CONNECT_TIMEOUT="1")
    server = EmbeddedPostgres(folder, port=port)
    try:
        assert worker.proc.stdout is not None
        lines = iter(worker.proc.stdout.readline, "")  # it logs as it retries
        assert any("cannot connect to Postgres" in line for line, _ in zip(lines, range(50), strict=False))
        threading.Thread(target=lambda: all(lines), daemon=True).start()  # keep the pipe drained
        server.start()
        app = Durable(dsn, schema=schema)
        app.migrate()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {schema}.effects (run_id uuid, what text)")
        app.function(id="count-once", event="test/count-once")(lambda ctx: None)
        [event_id] = app.send("test/count-once", {"n": 7})
        [run] = app.runs_for_event(event_id)
        done = app.wait_for_run(run.id, timeout=60)
        assert (done.status, done.output) == ("completed", 7)
        app.stop()
    finally:
        worker.kill()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_second_sigint_exits_at_once(
    tables: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    app = tables
    run, worker = start_in_step_two(app, db, worker_process)
    worker.proc.send_signal(signal.SIGINT)  # drain: would wait for the blocked step...
    assert worker.proc.stdout is not None
    lines = iter(worker.proc.stdout.readline, "")
    assert any("interrupt again to exit now" in line for line, _ in zip(lines, range(50), strict=False))
    worker.proc.send_signal(signal.SIGINT)  # ...but a second interrupt exits now
    assert worker.proc.wait(20) == -signal.SIGINT
    still = app.get_run(run.id)
    assert still is not None and still.status == "running"  # its lease expires; nothing is lost
