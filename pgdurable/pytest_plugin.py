"""pytest fixtures for apps built on pgdurable, loaded by pytest on install.

- `pgdurable_dsn` (session): `PGDURABLE_TEST_DSN`, else a server on
  127.0.0.1:5432 if one answers, else a throwaway cluster (the system's
  PostgreSQL, or the `embedded` extra's), stopped after the session.
- `pgdurable_schema`: a fresh schema name on that server, dropped (with
  all in it) after the test: tests never see each other's runs.
- `pgdurable_app`: the app the ini option `pgdurable_app` names
  (`module:attribute`), with its functions, on `pgdurable_schema`,
  migrated; stopped after the test. Without the option, an empty app to
  register functions on.

With `pgdurable.testing.execute(pgdurable_app, ...)`, a test runs one of its
functions to its end in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from ._app import Durable
from .cli.admin import load_app
from .testing import copy_app, drop_schema, new_schema_name, test_server

# The session's server: found when a test first asks for it (a test session
# that needs none starts none), stopped when the session ends.
_server = ExitStack()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("pgdurable_app", "the pgdurable app your tests run, as module:attribute "
                  "(fixture pgdurable_app)", default="")


def pytest_sessionfinish(session: pytest.Session) -> None:
    _server.close()


@pytest.fixture(scope="session")
def pgdurable_dsn(pytestconfig: pytest.Config) -> str:
    """A PostgreSQL server for the session (see the module's docstring); the
    report says which."""
    dsn, how = _server.enter_context(test_server())
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\npgdurable tests: PostgreSQL from {how}")
    return dsn


@pytest.fixture
def pgdurable_schema(pgdurable_dsn: str) -> Iterator[str]:
    """A fresh schema name, dropped after the test (see the module's docstring)."""
    schema = new_schema_name()
    yield schema
    drop_schema(pgdurable_dsn, schema)


@pytest.fixture
def pgdurable_app(
    pgdurable_dsn: str, pgdurable_schema: str, pytestconfig: pytest.Config
) -> Iterator[Durable]:
    """The app under test on a schema of its own, migrated (see the module's docstring)."""
    named = str(pytestconfig.getini("pgdurable_app"))
    app = copy_app(load_app(named), pgdurable_dsn, pgdurable_schema) if named \
        else Durable(pgdurable_dsn, schema=pgdurable_schema)
    try:
        app.migrate()
        yield app
    finally:
        app.stop()
