"""The private server used by the demo and, where no server runs, by the tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


STARTER = """
import sys, time
from pgdurable.embedded import EmbeddedPostgres
server = EmbeddedPostgres(sys.argv[1])
print(server.start(), flush=True)
time.sleep(float(sys.argv[2]))
server.stop()
"""


def _starter(folder: Path, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", STARTER, str(folder), str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def folder() -> Iterator[Path]:
    made = tempfile.mkdtemp(prefix="pgdurable-embedded-")
    os.chmod(made, 0o755)
    yield Path(made) / "db"
    leftover = EmbeddedPostgres(Path(made) / "db")
    if (Path(made) / "db" / "pgdata").exists():
        leftover.start()  # adopts whatever is still running, to stop it
        leftover.stop()
    shutil.rmtree(made)


@pytest.mark.skipif(_system_bindir() is None, reason="no system PostgreSQL binaries")
def test_the_folder_is_reusable_after_its_owner_was_killed(folder: Path) -> None:
    """Issue 22, s16: the server a SIGKILLed process left running is adopted."""
    owner = _starter(folder, 60)
    assert owner.stdout is not None
    dsn = owner.stdout.readline().strip()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    with EmbeddedPostgres(folder) as again, psycopg.connect(again) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (7,)
    with pytest.raises(psycopg.OperationalError):  # its new owner stopped it
        psycopg.connect(dsn, connect_timeout=2)


@pytest.mark.skipif(_system_bindir() is None, reason="no system PostgreSQL binaries")
def test_concurrent_starts_on_one_folder_share_one_server(folder: Path) -> None:
    starters = [_starter(folder, 3) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in starters]
    assert [p.returncode for p in starters] == [0, 0], [err for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1, "both got the same server"
