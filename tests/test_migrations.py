from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from conftest import send_from_threads

from pgdurable import ConfigurationError, Durable, MigrationError
from pgdurable.store import Store

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
