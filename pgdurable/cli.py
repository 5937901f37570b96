"""`pgdurable migrate`, `roles`, `schema`, `prune` and `worker module:app`."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType

from ._app import Durable
from ._store import fresh_schema_ddl
from .errors import ConfigurationError, DurableError, NewerSchemaError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _count(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int from `low` (to `high`), else a one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bounds}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgdurable", description=__doc__)
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        default=os.environ.get("PGDURABLE_LOG_LEVEL", "INFO").upper())
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="create or upgrade the schema")
    migrate.add_argument("--dsn", help="defaults to PGDURABLE_DSN, then DATABASE_URL")
    migrate.add_argument("--schema", default="pgdurable")

    roles = commands.add_parser("roles", help="create and grant the least-privilege roles")
    roles.add_argument("--dsn", help="defaults to PGDURABLE_DSN, then DATABASE_URL")
    roles.add_argument("--schema", default="pgdurable")
    roles.add_argument("--sender", default="pgdurable_sender")
    roles.add_argument("--worker", default="pgdurable_worker")

    schema = commands.add_parser("schema", help="print the DDL that migrate creates (nothing is kept)")
    schema.add_argument("--dsn", help="defaults to PGDURABLE_DSN, then DATABASE_URL")

    prune = commands.add_parser("prune", help="remove what has expired under the recorded retention")
    prune.add_argument("--dsn", help="defaults to PGDURABLE_DSN, then DATABASE_URL")
    prune.add_argument("--schema", default="pgdurable")
    prune.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    prune.add_argument("--as-of", type=_moment, default=None,
                       help="prune as if it were this time (ISO 8601 with a UTC offset)")
    prune.add_argument("--json", action="store_true", help="print the counts as JSON")

    worker = commands.add_parser("worker", help="run a worker for an app")
    worker.add_argument("app", help="where the app is, as module.path:attribute")
    worker.add_argument("--threads", type=_count(1, 256), default=4)
    worker.add_argument("--prefetch", type=_count(0), default=None)
    worker.add_argument("--shutdown-timeout", type=_seconds, default=30.0)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "migrate":
            applied = Durable(args.dsn, schema=args.schema).migrate()
            print(f"applied migrations {applied}" if applied else "schema is up to date")
            return 0
        if args.command == "roles":
            Durable(args.dsn, schema=args.schema).create_roles(args.sender, args.worker)
            print(f"roles {args.sender} (sender) and {args.worker} (worker) granted "
                  f"on schema {args.schema}")
            return 0
        if args.command == "schema":
            with Durable(args.dsn).connection() as conn:
                print(fresh_schema_ddl(conn), end="")
            return 0
        if args.command == "prune":
            return run_prune(Durable(args.dsn, schema=args.schema), args.dry_run, args.as_of,
                             args.json)
        return run_worker(load_app(args.app), args.threads, args.prefetch, args.shutdown_timeout)
    except DurableError as exc:
        print(f"pgdurable: {exc}", file=sys.stderr)
        return 2


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset, e.g. +00:00")
    return moment


def run_prune(app: Durable, dry_run: bool, as_of: datetime | None, as_json: bool) -> int:
    """Prune (or count, dry), showing progress on stderr; print what went."""
    def progress(kind: str, count: int) -> None:
        print(f"\r{kind}: {count} ...", end="", file=sys.stderr, flush=True)

    counts = app.prune(as_of, dry_run=dry_run, progress=None if as_json else progress)
    if as_json:
        print(json.dumps(counts))
        return 0
    print("\r", end="", file=sys.stderr)
    verb = "would remove" if dry_run else "removed"
    for kind, count in counts.items():
        print(f"{verb} {count:>10} {kind.replace('_', ' ')}")
    return 0


def load_app(path: str) -> Durable:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise DurableError(f"{path!r}: expected module.path:attribute, e.g. myapp.jobs:app")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DurableError(f"{path!r}: cannot import {module_name!r} ({exc})") from None
    app = getattr(module, attribute, None)
    if not isinstance(app, Durable):
        raise DurableError(f"{path!r} is not a pgdurable.Durable app")
    return app


def run_worker(app: Durable, threads: int, prefetch: int | None, timeout: float) -> int:
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
            app.start(threads=threads, prefetch=prefetch)
            break
        except (ConfigurationError, NewerSchemaError):  # waiting will not mend these
            raise
        except DurableError as exc:  # Postgres not reachable or not migrated yet: keep trying
            log.warning("%s; retrying in 2 s", exc)
            stop.wait(2.0)
    stop.wait()
    app.stop(timeout)
    return 0
