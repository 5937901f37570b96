"""What the commands share: the database options, times, output (tables
for people, JSON for scripts) and bulk actions' confirmation and progress."""

from __future__ import annotations

import functools
import getpass
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from .._app import Durable
from .._durations import parse_moment
from ..errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

PAGE = 500  # runs per chunk of a bulk action


def with_app(command: F) -> F:
    """Give the command `app`, a Durable for --dsn/--schema, closed after it."""
    @click.option("--dsn", envvar="PGDURABLE_DSN", default=None,
                  help="PostgreSQL DSN [env: PGDURABLE_DSN, then DATABASE_URL]")
    @click.option("--schema", envvar="PGDURABLE_SCHEMA", default="pgdurable", show_default=True,
                  help="pgdurable's schema [env: PGDURABLE_SCHEMA]")
    @functools.wraps(command)
    def run(dsn: str | None, schema: str, **options: Any) -> Any:
        app = Durable(dsn, schema=schema)
        try:
            return command(app, **options)
        finally:
            app.stop()

    return run  # type: ignore[return-value]


def stacked(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """Decorators as one, applied as if written one above the other."""
    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON, for scripts")


def moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An option's time (a click callback): see parse_moment."""
    if value is None:
        return None
    try:
        return parse_moment(value, now=datetime.now(UTC))
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def actor() -> str:
    """Who the audit log says did an action from this command line."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                empty: str = "nothing to show") -> None:
    """Rows as a table for people (rich); cells may hold rich markup."""
    from rich.table import Table

    if not rows:
        click.echo(empty)
        return
    table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for n, column in enumerate(columns):
        table.add_column(column, no_wrap=n == 0)  # ids are copied whole
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console()(table)


def print_page(columns: Sequence[str], rows: Sequence[Sequence[Any]], limit: int, *,
               empty: str) -> None:
    """A page of a keyset listing (ids first): the table, and on stderr,
    when it is full, what gives the next page."""
    print_table(columns, rows, empty=empty)
    if len(rows) == limit:
        click.echo(f"more: --after {rows[-1][0]}", err=True)


def console() -> Callable[..., None]:
    """Print with rich: to a terminal at its width, elsewhere (a pipe, a
    file) one line per row, however long."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=100_000)
    return out.print


STATUS_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow", "skipped": "dim",
                "running": "cyan", "sleeping": "blue", "waiting": "blue", "queued": "white",
                "retrying": "magenta"}


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def confirm_and_apply(
    what: str, items: Sequence[str], apply: Callable[[Sequence[str]], int], *,
    yes: bool, dry_run: bool, as_json: bool,
) -> int:
    """The bulk action's protocol: say how many match; stop there for a dry
    run; ask (unless --yes); apply in chunks with a progress bar."""
    if dry_run or not items:
        if as_json:
            print_json({"matched": len(items), "done": 0, "dry_run": dry_run})
        else:
            click.echo(f"{len(items)} runs match; nothing done" + (" (dry run)" if dry_run else ""))
        return 0
    if not as_json:
        click.echo(f"{len(items)} runs match")
    if not yes:
        click.confirm(f"{what} {len(items)} runs?", abort=True, err=True)
    done = 0
    for chunk in _progress(items, what, quiet=as_json):
        done += apply(chunk)
    if as_json:
        print_json({"matched": len(items), "done": done, "dry_run": False})
    else:
        click.echo(f"{what.lower()}: {done} of {len(items)} runs")
    return 0


def _progress(items: Sequence[str], what: str, *, quiet: bool) -> Iterator[Sequence[str]]:
    from rich.progress import Progress

    chunks = [items[i:i + PAGE] for i in range(0, len(items), PAGE)]
    with Progress(transient=True, disable=quiet) as progress:
        task = progress.add_task(what, total=len(items))
        for chunk in chunks:
            yield chunk
            progress.advance(task, len(chunk))
