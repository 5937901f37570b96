"""`pgdurable migrate`, `roles`, `schema`, `prune` and `worker module:app`."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from types import FrameType

import click

from .._app import Durable
from .._store import fresh_schema_ddl
from .._worker import DEFAULT_ASYNC_RUNS
from ..errors import ConfigurationError, DurableError, NewerSchemaError
from .common import json_option, moment, print_json, with_app


@click.command()
@with_app
def migrate(app: Durable) -> int:
    """Create or upgrade the schema."""
    applied = app.migrate()
    click.echo(f"applied migrations {applied}" if applied else "schema is up to date")
    return 0


@click.command()
@with_app
@click.option("--sender", default="pgdurable_sender", show_default=True)
@click.option("--worker", default="pgdurable_worker", show_default=True)
def roles(app: Durable, sender: str, worker: str) -> int:
    """Create and grant the least-privilege roles."""
    app.create_roles(sender, worker)
    click.echo(f"roles {sender} (sender) and {worker} (worker) granted on schema {app.schema}")
    return 0


@click.command()
@click.option("--dsn", envvar="PGDURABLE_DSN", default=None,
              help="PostgreSQL DSN [env: PGDURABLE_DSN, then DATABASE_URL]")
def schema(dsn: str | None) -> int:
    """Print the DDL that migrate creates (nothing is kept)."""
    app = Durable(dsn)
    try:
        with app.connection() as conn:
            click.echo(fresh_schema_ddl(conn), nl=False)
    finally:
        app.stop()
    return 0


@click.command()
@with_app
@click.option("--dry-run", is_flag=True, help="count, remove nothing")
@click.option("--as-of", callback=moment, default=None,
              help="prune as if it were this time (ISO 8601 with a UTC offset)")
@json_option
def prune(app: Durable, dry_run: bool, as_of: datetime | None, as_json: bool) -> int:
    """Remove what has expired under the recorded retention."""
    def progress(kind: str, count: int) -> None:
        click.echo(f"\r{kind}: {count} ...", nl=False, err=True)

    counts = app.prune(as_of, dry_run=dry_run, progress=None if as_json else progress)
    if as_json:
        print_json(counts)
        return 0
    click.echo("\r", nl=False, err=True)
    verb = "would remove" if dry_run else "removed"
    for kind, count in counts.items():
        click.echo(f"{verb} {count:>10} {kind.replace('_', ' ')}")
    return 0


@click.command()
@click.argument("app_path", metavar="MODULE:ATTRIBUTE")
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True,
              help="def handlers executing at once (16 x as many runs under way)")
@click.option("--prefetch", type=click.IntRange(0), default=None,
              help="runs claimed ahead of free threads [default: 4 x threads]")
@click.option("--async-runs", type=click.IntRange(1, 10_000), default=DEFAULT_ASYNC_RUNS,
              show_default=True, help="async def handlers executing at once, on one event loop")
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
              help="seconds running handlers get to finish at SIGTERM")
def worker(app_path: str, threads: int, prefetch: int | None, async_runs: int,
           shutdown_timeout: float) -> int:
    """Run a worker for the app at MODULE:ATTRIBUTE (e.g. myapp.jobs:app)."""
    return run_worker(load_app(app_path), threads, prefetch, shutdown_timeout, async_runs)


def load_app(path: str) -> Durable:
    """The Durable at `module.path:attribute`, imported from the current directory."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ConfigurationError(f"{path!r}: expected module.path:attribute, e.g. myapp.jobs:app")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{path!r}: cannot import {module_name!r} ({exc})") from None
    app = getattr(module, attribute, None)
    if not isinstance(app, Durable):
        raise ConfigurationError(f"{path!r} is not a pgdurable.Durable app")
    return app


def run_worker(app: Durable, threads: int, prefetch: int | None, timeout: float,
               async_runs: int = DEFAULT_ASYNC_RUNS) -> int:
    """Run until SIGTERM or SIGINT (drain), or a second SIGINT (stop at once)."""
    stop = threading.Event()

    log = logging.getLogger("pgdurable.worker")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The next interrupt takes the default action, ending the process at
        # once: no Python code has to run for it, however busy the process is.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        log.warning("%s: draining, running handlers may finish (interrupt again to exit now)",
                    signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.is_set():
        try:
            app.start(threads=threads, prefetch=prefetch, async_runs=async_runs)
            break
        except (ConfigurationError, NewerSchemaError):  # waiting will not mend these
            raise
        except DurableError as exc:  # Postgres not reachable or not migrated yet: keep trying
            log.warning("%s; retrying in 2 s", exc)
            stop.wait(2.0)
    stop.wait()
    app.stop(timeout)
    return 0
