from __future__ import annotations

import difflib
import re
import threading
from typing import Any

import psycopg
import pytest
from conftest import send_from_threads, wait_until

from pgdurable import (
    Batch,
    Concurrency,
    ConfigurationError,
    Debounce,
    Durable,
    MigrationError,
    Throttle,
)
from pgdurable._store import Store, fresh_schema_ddl, functions_checksum, functions_revision, sql_dir

MIGRATIONS = Store("x").migrations()
ALL_VERSIONS = [m.version for m in MIGRATIONS]


def test_migrate_is_idempotent_and_recorded(app: Durable, db: psycopg.Connection[Any]) -> None:
    assert app.migrate() == []
    rows = db.execute(f"SELECT version, name FROM {app.schema}.schema_version").fetchall()
    assert rows[:2] == [(1, "core"), (2, "waits")]
    assert rows == [(m.version, m.name) for m in MIGRATIONS]


def test_concurrent_migrations_apply_once(make_app: Any, db: psycopg.Connection[Any]) -> None:
    apps = [make_app() for _ in range(4)]
    results: list[list[int]] = []
    barrier = threading.Barrier(len(apps))

    def migrate(app: Durable) -> None:
        barrier.wait()
        results.append(app.migrate())

    threads = [threading.Thread(target=migrate, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [[], [], [], ALL_VERSIONS]
    count = db.execute(f"SELECT count(*) FROM {apps[0].schema}.schema_version").fetchone()
    assert count == (len(ALL_VERSIONS),)


@pytest.mark.parametrize("name", ["", "Upper", "1abc", "a-b", "x; DROP TABLE y", "a" * 49, None])
def test_invalid_schema_names_are_refused(dsn: str, name: Any) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        Durable(dsn, schema=name)


def test_using_an_unmigrated_schema_says_so(make_app: Any) -> None:
    app = make_app()
    with pytest.raises(MigrationError, match="not migrated"):
        app.send("a", {})
    with pytest.raises(MigrationError, match="not migrated"):
        app.start()


def test_cli_migrate(dsn: str, schema: str, db: psycopg.Connection[Any]) -> None:
    from pgdurable.cli import main

    assert main(["migrate", "--dsn", dsn, "--schema", schema]) == 0
    assert main(["migrate", "--dsn", dsn, "--schema", schema]) == 0
    assert db.execute(f"SELECT count(*) FROM {schema}.schema_version").fetchone() == (len(ALL_VERSIONS),)


def test_no_database_configured_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDURABLE_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="PGDURABLE_DSN"):
        Durable()


def test_dsn_from_environment(monkeypatch: pytest.MonkeyPatch, dsn: str, schema: str) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    app = Durable(schema=schema)
    try:
        assert app.migrate() == ALL_VERSIONS
    finally:
        app.stop()


def test_unreachable_database_is_a_clear_error(schema: str) -> None:
    app = Durable("postgresql://postgres@127.0.0.1:1/postgres", schema=schema, connect_timeout=1)
    with pytest.raises(Exception, match="cannot connect to Postgres"):
        app.migrate()


def test_changed_functions_are_recreated_by_migrate(app: Durable, db: psycopg.Connection[Any]) -> None:
    """Functions and views are not versioned: `migrate` recreates them all
    when their text changed (simulated by a stale checksum)."""
    db.execute(f"UPDATE {app.schema}.schema_functions SET checksum = 'stale'")
    db.execute(f"DROP VIEW {app.schema}.queue_depth")
    with pytest.raises(MigrationError, match="not migrated"):
        app.start()
    assert app.migrate() == []
    assert db.execute(f"SELECT count(*) FROM {app.schema}.queue_depth").fetchone() == (0,)
    app.start(threads=1)


def test_sends_go_on_while_migrate_recreates_the_functions(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """Issue 22, s16: a send whose function is swapped under it by an
    upgrade is tried once more, not failed."""
    app.function(id="f", event="e")(lambda ctx: None)
    errors: list[BaseException] = []
    stop = threading.Event()

    def send(_: int) -> None:
        for _ in range(100):
            try:
                app.send("e", {})
            except Exception as exc:
                errors.append(exc)

    def upgrade() -> None:
        while not stop.is_set():
            db.execute(f"UPDATE {app.schema}.schema_functions SET checksum = 'old'")
            app.migrate()

    upgrader = threading.Thread(target=upgrade)
    upgrader.start()
    try:
        send_from_threads(3, send)
    finally:
        stop.set()
        upgrader.join(30)
    assert errors == []
    assert db.execute(f"SELECT count(*) FROM {app.schema}.runs").fetchone() == (300,)


# -- issue 14, s5: upgrades in the right direction only ---------------------------


def test_the_functions_revision_is_bumped_with_the_functions() -> None:
    revision, recorded = functions_revision()
    assert functions_checksum() == recorded, (
        f"sql/functions/ changed: bump the revision in sql/functions/REVISION to "
        f"{revision + 1} and record its sha256 {functions_checksum()}")


def test_a_library_older_than_the_schema_neither_migrates_nor_starts(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    latest = max(ALL_VERSIONS)
    db.execute(f"INSERT INTO {app.schema}.schema_version VALUES (%s, 'from-the-future')",
               (latest + 1,))
    message = f"at migration {latest + 1}, newer than this pgdurable's latest \\({latest}\\)"
    with pytest.raises(MigrationError, match=message):
        app.migrate()
    with pytest.raises(MigrationError, match=message):
        app.start(threads=1)


def test_a_library_older_than_the_functions_does_not_replace_them(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    ours = functions_revision()[0]
    db.execute(f"UPDATE {app.schema}.schema_functions SET checksum = 'newer', revision = %s",
               (ours + 1,))
    with pytest.raises(MigrationError, match=f"revision {ours + 1}, newer than this pgdurable's"):
        app.migrate()
    with pytest.raises(MigrationError, match="will not replace them"):
        app.start(threads=1)
    assert db.execute(f"SELECT checksum FROM {app.schema}.schema_functions").fetchone() == ("newer",)


def test_functions_written_by_a_library_without_revisions_are_upgraded(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    db.execute(f"ALTER TABLE {app.schema}.schema_functions DROP COLUMN revision")
    db.execute(f"UPDATE {app.schema}.schema_functions SET checksum = 'older'")
    assert app.migrate() == []
    assert db.execute(f"SELECT revision FROM {app.schema}.schema_functions").fetchone() == (
        functions_revision()[0],)


def test_the_worker_command_exits_at_once_on_a_newer_schema(
    app: Durable, db: psycopg.Connection[Any], worker_process: Any
) -> None:
    db.execute(f"INSERT INTO {app.schema}.schema_version VALUES (%s, 'from-the-future')",
               (max(ALL_VERSIONS) + 1,))
    worker = worker_process()
    assert worker.proc.wait(60) == 2
    assert "newer than this pgdurable's latest" in worker.output()


def test_sql_schema_sql_is_what_migrate_creates(dsn: str) -> None:
    """Issue 14, s4: sql/schema.sql, the one file a newcomer reads to know
    every table, is kept in step with the migrations and functions."""
    recorded = (sql_dir() / "schema.sql").read_text()
    found = re.search(r"on PostgreSQL (\d+)", recorded)
    assert found is not None, "sql/schema.sql lost its header"
    with psycopg.connect(dsn) as conn:
        if conn.info.server_version // 10000 != int(found[1]):
            pytest.skip(f"sql/schema.sql renders PostgreSQL {found[1]}'s catalogs; this server "
                        f"is {conn.info.server_version // 10000}")
        fresh = fresh_schema_ddl(conn)
    diff = list(difflib.unified_diff(recorded.splitlines(), fresh.splitlines(), "sql/schema.sql",
                                     "a fresh migrate", lineterm="", n=1))
    assert not diff, "run `pgdurable schema > sql/schema.sql`:\n" + "\n".join(diff[:40])


def test_run_options_stored_positionally_are_named_by_migration_12(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """Runs queued, debounced or batched by the previous version (options as
    positional arrays) go on after the upgrade that names them."""
    app.function(id="throttled", event="t", throttle=Throttle(limit=1, period="1h"))(lambda c: 1)
    app.function(id="debounced", event="d", debounce=Debounce(period="200ms"),
                 concurrency=Concurrency(limit=1))(lambda c: 2)
    app.function(id="batched", event="b", batch=Batch(max_size=5, timeout="200ms"),
                 concurrency=Concurrency(limit=1))(lambda c: 3)
    for name in ("t", "d", "b"):
        app.send(name, {})
    s = app.schema
    db.execute(f"""UPDATE {s}.queue SET throttle = jsonb_build_array(throttle -> 'key',
                   throttle -> 'limit', throttle -> 'period', throttle -> 'burst')""")
    for table in ("debounces", "batch_items"):
        db.execute(f"""UPDATE {s}.{table} SET flow = flow || jsonb_build_object('slots',
                       (SELECT jsonb_agg(jsonb_build_array(x -> 'key', x -> 'limit'))
                        FROM jsonb_array_elements(flow -> 'slots') x))""")
    db.execute(f"DELETE FROM {s}.schema_version WHERE version = 12")
    assert app.migrate() == [12]
    shapes = db.execute(f"""SELECT (SELECT jsonb_typeof(throttle) FROM {s}.queue),
                                   (SELECT jsonb_typeof(flow -> 'slots' -> 0) FROM {s}.debounces),
                                   (SELECT jsonb_typeof(flow -> 'slots' -> 0) FROM {s}.batch_items)
                         """).fetchone()
    assert shapes == ("object", "object", "object")
    app.start(threads=2)
    for function, output in (("throttled", 1), ("debounced", 2), ("batched", 3)):
        [run] = wait_until(lambda f=function: app.list_runs(function=f), what=f"a run of {function}")
        assert app.wait_for_run(run.id, 20).output == output
