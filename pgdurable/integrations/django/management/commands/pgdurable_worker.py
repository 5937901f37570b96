"""`python manage.py pgdurable_worker`: run a worker for settings.PGDURABLE_APP."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pgdurable._worker import DEFAULT_ASYNC_RUNS
from pgdurable.cli.admin import load_app, run_worker
from pgdurable.integrations.django import durable_app


class Command(BaseCommand):
    help = "Run a pgdurable worker until SIGTERM or SIGINT (drains), or a second SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--app", help="module.path:attribute (default: settings.PGDURABLE_APP)")
        parser.add_argument("--threads", type=int, default=4)
        parser.add_argument("--prefetch", type=int, default=None)
        parser.add_argument("--async-runs", type=int, default=DEFAULT_ASYNC_RUNS)
        parser.add_argument("--shutdown-timeout", type=float, default=30.0)

    def handle(self, *args: Any, **options: Any) -> None:
        app = load_app(options["app"]) if options["app"] else durable_app()
        run_worker(app, options["threads"], options["prefetch"], options["shutdown_timeout"],
                   options["async_runs"])
