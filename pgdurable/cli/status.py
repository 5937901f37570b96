"""`pgdurable functions`, `workers`, `doctor` and `dashboard`."""

from __future__ import annotations

import click

from .._app import Durable
from .._format import format_time
from .._registry import FunctionInfo
from .common import console, json_option, print_json, print_table, with_app

VERDICT_STYLE = {"ok": "green", "warning": "yellow", "problem": "bold red"}


@click.command()
@with_app
@json_option
def functions(app: Durable, as_json: bool) -> int:
    """The functions workers serve (as the last to start recorded them)."""
    found = app.list_functions()
    if as_json:
        print_json([f.to_dict() for f in found])
        return 0
    print_table(["FUNCTION", "TRIGGERS", "NEXT TICK", "RETRIES", "OPTIONS", "LIVE WORKERS",
                 "LAST SEEN"],
                [[f.id, _triggers(f), format_time(f.next_tick), f.retries, ", ".join(sorted(f.options)),
                  f.live_workers, format_time(f.last_seen_at)] for f in found],
                empty="no function recorded yet: workers record theirs when they start")
    return 0


def _triggers(function: FunctionInfo) -> str:
    triggers = list(function.events)
    if function.cron:
        triggers.append(f"cron {function.cron} ({function.timezone})")
    return ", ".join(triggers)


@click.command()
@with_app
@json_option
def workers(app: Durable, as_json: bool) -> int:
    """Worker processes: live ones, and those gone silent in the last day."""
    found = app.list_workers()
    if as_json:
        print_json([w.to_dict() for w in found])
        return 0
    print_table(["WORKER", "VERSION", "THREADS", "RUNS HELD", "STARTED", "LAST SEEN", "LIVE"],
                [[w.id, w.version, w.threads, w.runs_held, format_time(w.started_at),
                  format_time(w.last_seen_at), "yes" if w.live else "[red]no[/]"] for w in found],
                empty="no worker is running")
    return 0


@click.command()
@with_app
@json_option
def doctor(app: Durable, as_json: bool) -> int:
    """Check what hurts in production; exit 1 if something must be fixed."""
    checks = app.doctor()
    if as_json:
        print_json([c.to_dict() for c in checks])
    else:
        echo = console()
        for check in checks:
            mark = VERDICT_STYLE[check.verdict]
            echo(f"[{mark}]{check.verdict:<8}[/] [bold]{check.name}[/]: {check.found}")
            if check.advice:
                echo(f"{'':<8} -> {check.advice}")
    return 1 if any(c.verdict == "problem" for c in checks) else 0


@click.command()
@with_app
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8288, show_default=True)
@click.option("--allow-actions", is_flag=True, help="let the pages cancel, replay and fork runs")
@click.option("--root-path", default="", help="the path prefix a reverse proxy serves it under")
def dashboard(app: Durable, host: str, port: int, allow_actions: bool, root_path: str) -> int:
    """Serve the web dashboard (needs the `dashboard` extra)."""
    try:
        import uvicorn

        from ..dashboard import create_app
    except ImportError as exc:
        raise click.UsageError(f"the dashboard needs pip install 'pgdurable[dashboard]' ({exc})") from None
    click.echo(f"pgdurable dashboard on http://{host}:{port}{root_path}/"
               + ("" if allow_actions else " (read-only)"), err=True)
    uvicorn.run(create_app(app, allow_actions=allow_actions), host=host, port=port,
                root_path=root_path, log_level="warning")
    return 0
