"""The CLI refuses bad arguments in one line and a non-zero exit, at once;
only an unreachable database is waited for (issue 22, s16)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

ARGUMENTS = [
    (["worker", "procapp:app", "--threads", "0"], "'--threads': 0 is not in the range 1<=x<=256"),
    (["worker", "procapp:app", "--threads", "many"], "'many' is not a valid integer"),
    (["worker", "procapp:app", "--prefetch", "-5"], "'--prefetch': -5 is not in the range x>=0"),
    (["worker", "procapp:app", "--shutdown-timeout", "-1"], "-1.0 is not in the range x>=0"),
    (["worker", "nosuchmod:app"], "cannot import 'nosuchmod'"),
    (["worker", "nocolon"], "expected module.path:attribute"),
    (["migrate", "--dsn", "notadsn"], "'notadsn' is not a PostgreSQL connection string"),
    (["--log-level", "bogus", "migrate"], "'bogus' is not one of 'debug'"),
    (["runs", "list", "--since", "yesterday"], "neither an ISO 8601 time nor a duration"),
    (["runs", "list", "--status", "lost"], "'lost' is not one of 'queued'"),
    (["runs", "fork", "r", "--from-step", "ocr", "--data", "{", "--dsn", "host=nowhere"],
     "--data: not JSON"),
]


@pytest.mark.parametrize(("arguments", "message"), ARGUMENTS)
def test_a_bad_argument_is_one_clear_line_and_a_non_zero_exit(
    arguments: list[str], message: str
) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pgdurable", *arguments],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30, "refused at once, not retried"


def test_a_bad_dsn_in_the_api_is_a_configuration_error() -> None:
    from pgdurable import ConfigurationError, Durable

    for dsn in ("postgresql://u:hunter2@h/db?nosuchoption=1", "host=h password=hunter2 = x"):
        with pytest.raises(ConfigurationError, match="not a PostgreSQL connection string") as err:
            Durable(dsn)
        assert "hunter2" not in str(err.value)


def test_schema_prints_what_migrate_creates_and_keeps_nothing(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    from pgdurable.cli import main

    assert main(["schema", "--dsn", dsn]) == 0
    printed = capsys.readouterr().out
    assert "CREATE TABLE pgdurable.queue (" in printed and "FUNCTION pgdurable.flush(" in printed
    with psycopg.connect(dsn) as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgdurable_ddl_%'")
        assert left.fetchone() == (0,)
