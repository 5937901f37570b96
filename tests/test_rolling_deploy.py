"""A rolling deploy (issue 14, s5): a worker of the running version keeps
going while a newer version migrates the schema under it.

The newer version is this code with a copy of sql/ that has one migration
more and a higher functions revision. The older worker, in a subprocess,
hears of the migrate, says so in one log line and claims nothing more; the
runs it holds finish; the newer version's worker takes what is left. No run
is lost, and no step runs twice.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import WorkerProcess, count, wait_until

import pgdurable._store as store_module
from pgdurable import Durable


@pytest.fixture
def newer_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process speaks as the next version: its SQL files, from then on."""
    sql = tmp_path / "sql"
    shutil.copytree(store_module.sql_dir(), sql)
    latest = max(int(p.name[:4]) for p in (sql / "migrations").glob("[0-9]*.sql"))
    (sql / "migrations" / f"{latest + 1:04d}_next_version.sql").write_text(
        "ALTER TABLE {schema}.events ADD COLUMN origin text;\n")
    with (sql / "functions" / "07_views.sql").open("a") as views:
        views.write("\n-- the next version's functions\n")
    revision, _ = store_module.functions_revision()
    (sql / "functions" / "REVISION").write_text(f"revision {revision + 1}\nsha256 -\n")

    def reload() -> None:
        for cached in (store_module._query_texts, store_module.functions_revision,
                       store_module._migration_files):
            cached.cache_clear()

    monkeypatch.setattr(store_module, "sql_dir", lambda: sql)
    reload()
    yield sql
    monkeypatch.undo()
    reload()


def test_an_older_worker_stops_claiming_and_loses_nothing(
    app: Durable, db: psycopg.Connection[Any], worker_process: Callable[..., WorkerProcess],
    make_app: Callable[..., Durable], request: pytest.FixtureRequest,
) -> None:
    db.execute(f"CREATE TABLE {app.schema}.effects (run_id uuid, what text)")
    db.execute(f"CREATE TABLE {app.schema}.flags (name text)")
    app.function(id="two-steps", event="test/two-steps")(lambda ctx: None)  # to fan out sends
    older = worker_process(threads=4)
    lines = _lines_of(older)
    before = [app.send("test/two-steps", {"n": n})[0] for n in range(3)]
    wait_until(lambda: count(db, app.schema, "effects WHERE what = 'two-start'") == 3,
               what="the older worker inside three runs")

    request.getfixturevalue("newer_sql")
    newer = make_app()
    _register_two_steps(newer)
    assert newer.migrate() != []
    wait_until(lambda: any("stops claiming runs" in line for line in lines),
               what="the older worker's log line")
    assert any("newer than this pgdurable's" in line for line in lines)

    after = [newer.send("test/two-steps", {"n": n})[0] for n in range(3, 6)]
    db.execute(f"INSERT INTO {app.schema}.flags VALUES ('release')")
    runs = [run for event in before for run in app.runs_for_event(event)]
    for run in runs:
        assert app.wait_for_run(run.id, 30).status == "completed"  # held runs finish
    waiting = [run for event in after for run in newer.runs_for_event(event)]
    assert {r.status for r in waiting} == {"queued"}, "the older worker claimed after the migrate"

    newer.start(threads=2)
    for run in waiting:
        assert newer.wait_for_run(run.id, 30).status == "completed"
    effects = db.execute(f"SELECT what, count(*) FROM {app.schema}.effects GROUP BY what "
                         "ORDER BY what").fetchall()
    assert effects == [("one", 6), ("two-end", 6), ("two-start", 6)]  # each step once
    older.kill()


def _register_two_steps(app: Durable) -> None:
    """The newer version's two-steps: procapp's, writing to the same tables."""
    def effect(run_id: str, what: str) -> None:
        with app.connection() as conn:
            conn.execute(f"INSERT INTO {app.schema}.effects VALUES (%s, %s)", (run_id, what))

    def two_steps(ctx: Any) -> str:
        ctx.step.run("one", effect, ctx.run_id, "one")

        def second() -> str:
            effect(ctx.run_id, "two-start")
            effect(ctx.run_id, "two-end")  # released already
            return "done"

        return str(ctx.step.run("two", second))

    app.function(id="two-steps", event="test/two-steps")(two_steps)


def _lines_of(worker: WorkerProcess) -> list[str]:
    """The worker's output lines, as they come (read by a thread)."""
    lines: list[str] = []
    stream = worker.proc.stdout
    assert stream is not None
    threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True).start()
    return lines
