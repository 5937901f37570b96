"""The unit tier needs no PostgreSQL (issue 14, s2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_unit_tier_runs_where_no_server_answers() -> None:
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PGDURABLE_TEST_DSN": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(here / "unit")], capture_output=True, text=True, env=env,
                          timeout=120, cwd=here.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "PostgreSQL from" not in done.stdout
