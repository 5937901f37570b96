"""The private server used by the demo and, where no server runs, by the tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from pgdurable import DurableError
from pgdurable.embedded import EmbeddedPostgres, _system_bindir


@pytest.mark.skipif(_system_bindir() is None, reason="no system PostgreSQL binaries")
def test_embedded_server_starts_keeps_data_and_stops() -> None:
    folder = tempfile.mkdtemp(prefix="pgdurable-embedded-")
    os.chmod(folder, 0o755)
    data = Path(folder) / "db"
    with EmbeddedPostgres(data) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    with EmbeddedPostgres(data) as dsn, psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0 or _system_bindir() is None, reason="needs root")
def test_unreachable_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    os.chmod(tmp_path.parent, 0o700)
    with pytest.raises(DurableError, match="postgres user cannot reach"):
        EmbeddedPostgres(tmp_path / "db").start()
