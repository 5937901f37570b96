"""`pgdurable events list|show|send`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from .._app import Durable
from .._events import Event
from .._format import format_time
from ..errors import NotFoundError
from .admin import load_app
from .common import json_option, moment, print_json, print_page, print_table, styled, with_app


@click.group()
def events() -> None:
    """See and send events."""


def _data_line(event: Event) -> str:
    text = json.dumps(event.data, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _event_dict(event: Event) -> dict[str, Any]:
    return {"id": event.id, "name": event.name, "data": event.data,
            "ts": None if event.ts is None else event.ts.isoformat()}


@events.command("list")
@with_app
@click.option("--name", help="events of this name")
@click.option("--since", callback=moment, help="received at or after: ISO 8601 or e.g. 2h (ago)")
@click.option("--until", callback=moment, help="received before: ISO 8601 or e.g. 30m (ago)")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--after", help="the last event id of the page before (keyset paging)")
@json_option
def list_(app: Durable, name: str | None, since: datetime | None, until: datetime | None,
          limit: int, after: str | None, as_json: bool) -> int:
    """Events, newest first."""
    page = app.list_events(name=name, since=since, until=until, limit=limit, after=after)
    if as_json:
        print_json([_event_dict(e) for e in page])
        return 0
    print_page(["EVENT", "NAME", "TS", "DATA"],
               [[e.id, e.name, format_time(e.ts), _data_line(e)] for e in page], limit,
               empty="no events match")
    return 0


@events.command()
@with_app
@click.argument("event_id")
@json_option
def show(app: Durable, event_id: str, as_json: bool) -> int:
    """An event, its data, and the runs it triggered."""
    event = app.get_event(event_id)
    if event is None:
        raise NotFoundError(f"no event with id {event_id!r}")
    triggered = app.runs_for_event(event_id)
    if as_json:
        print_json(_event_dict(event) | {"runs": [r.to_dict() for r in triggered]})
        return 0
    click.echo(f"{event.name}  {event.id}  {format_time(event.ts)}")
    click.echo(json.dumps(event.data, indent=2, default=str))
    print_table(["RUN", "FUNCTION", "STATUS", "CREATED"],
                [[r.id, r.function_id, styled(r.status), format_time(r.created_at)] for r in triggered],
                title="runs", empty="it triggered no run")
    return 0


@events.command()
@click.argument("name")
@click.argument("data", default="{}")
@click.option("--app", "app_path", envvar="PGDURABLE_APP", required=True,
              metavar="MODULE:ATTRIBUTE",
              help="the app whose functions the event triggers [env: PGDURABLE_APP]")
@click.option("--id", "event_id", help="the event's id (a repeat within the dedupe window does nothing)")
@click.option("--ts", callback=moment, help="when runs start: ISO 8601 (with a UTC offset)")
@json_option
def send(name: str, data: str, app_path: str, event_id: str | None, ts: datetime | None,
         as_json: bool) -> int:
    """Send an event NAME with DATA (a JSON object) as the app at --app would."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
    app = load_app(app_path)
    try:
        [sent] = app.send(name, payload, id=event_id, ts=ts)
        triggered = app.runs_for_event(sent)
    finally:
        app.stop()
    if as_json:
        print_json({"event_id": sent, "run_ids": [r.id for r in triggered]})
    else:
        click.echo(f"event {sent}: {len(triggered)} runs " + " ".join(r.id for r in triggered))
    return 0
