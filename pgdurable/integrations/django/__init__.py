"""Django: send events in Django's own transaction, and a worker command.

Add "pgdurable.integrations.django" to INSTALLED_APPS and set
PGDURABLE_APP = "myproject.jobs:app" (where your Durable app is, or the app
itself); then `python manage.py pgdurable_worker --threads 4` runs a worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections

from ..._app import Durable
from ..._events import Event
from ...cli.admin import load_app
from ...errors import ConfigurationError


def durable_app() -> Durable:
    """The app of settings.PGDURABLE_APP: a Durable, or where one is
    ("module.path:attribute")."""
    found = getattr(settings, "PGDURABLE_APP", None)
    if isinstance(found, Durable):
        return found
    if not isinstance(found, str):
        raise ConfigurationError('set PGDURABLE_APP = "module.path:attribute" in Django settings')
    return load_app(found)


def send(
    app: Durable, name_or_events: str | Event | Sequence[Event], data: Any = None, *,
    id: str | None = None, ts: datetime | None = None, using: str = "default",
) -> list[str]:
    """`app.send` on Django's connection `using`, so inside `transaction.atomic()`
    the events (and their runs) commit or roll back with the block."""
    connection = connections[using]
    connection.ensure_connection()
    raw = connection.connection
    if not isinstance(raw, psycopg.Connection):
        raise ConfigurationError(
            f"database {using!r} is not on psycopg 3: use the postgresql backend with psycopg "
            "(Django 4.2+) installed")
    return app.send(name_or_events, data, id=id, ts=ts, conn=raw)
