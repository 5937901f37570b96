"""`pgdurable runs list|show|cancel|replay|fork`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, get_args

import click

from .._app import Durable
from .._format import format_span, format_time
from .._runs import Run, RunStatus, StepInfo
from ..errors import NotFoundError
from .common import (
    actor,
    confirm_and_apply,
    console,
    json_option,
    moment,
    print_json,
    print_page,
    print_table,
    stacked,
    styled,
    with_app,
)


@click.group()
def runs() -> None:
    """See and steer runs."""


# The run filters of list_runs, shared by `list` and the bulk actions.
filters = stacked(
    click.option("--function", help="runs of this function id"),
    click.option("--status", type=click.Choice(get_args(RunStatus))),
    click.option("--event", help="runs an event triggered: its id or name"),
    click.option("--since", callback=moment, help="created at or after: ISO 8601 or e.g. 2h (ago)"),
    click.option("--until", callback=moment, help="created before: ISO 8601 or e.g. 30m (ago)"),
)

# A bulk action's arguments: the runs given, or the filters that select them.
bulk = stacked(
    click.argument("run_ids", nargs=-1), filters,
    click.option("--yes", is_flag=True, help="do not ask for confirmation"),
    click.option("--dry-run", is_flag=True, help="count what matches, change nothing"),
    json_option,
)


@runs.command("list")
@with_app
@filters
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--after", help="the last run id of the page before (keyset paging)")
@json_option
def list_(app: Durable, limit: int, after: str | None, as_json: bool, **where: Any) -> int:
    """Runs, newest first."""
    page = app.list_runs(**where, limit=limit, after=after)
    if as_json:
        print_json([run.to_dict() for run in page])
        return 0
    print_page(["RUN", "FUNCTION", "STATUS", "ATTEMPT", "CREATED", "TOOK"], [
        [r.id, r.function_id, styled(r.status), r.attempt, format_time(r.created_at),
         format_span(r.started_at, r.finished_at)] for r in page], limit, empty="no runs match")
    return 0


@runs.command()
@with_app
@click.argument("run_id")
@json_option
def show(app: Durable, run_id: str, as_json: bool) -> int:
    """A run and the timeline of its steps."""
    run = app.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    steps = app.get_steps(run.id)
    if as_json:
        print_json(run.to_dict(traceback=True) | {"steps": [step.to_dict() for step in steps]})
        return 0
    _print_run(run)
    print_table(["#", "STEP", "STATUS", "ATTEMPTS", "STARTED", "TOOK", "ERROR"], [
        [s.position, s.key, styled(s.status), s.attempts, format_time(s.started_at),
         format_span(s.started_at, s.finished_at), _error_line(s)] for s in steps],
        title="steps", empty="no steps")
    if run.error is not None and run.error.traceback:
        click.echo("\n" + run.error.traceback.rstrip())
    return 0


def _print_run(run: Run) -> None:
    fields = [("run", run.id), ("function", run.function_id), ("status", styled(run.status)),
              ("attempt", run.attempt), ("events", ", ".join(run.event_ids)),
              ("parent", run.parent_run_id), ("forked from", run.forked_from),
              ("created", format_time(run.created_at)), ("started", format_time(run.started_at)),
              ("finished", format_time(run.finished_at)),
              ("took", format_span(run.started_at, run.finished_at))]
    if run.status == "completed":
        fields.append(("output", json.dumps(run.output, default=str)[:500]))
    if run.error is not None:
        fields.append(("error", f"[red]{run.error.type}[/]: {run.error.message}"))
    echo = console()
    for name, value in fields:
        if value is not None:
            echo(f"[bold]{name:>12}[/]  {value}")
    echo()


def _error_line(step: StepInfo) -> str | None:
    if step.error is None:
        return None
    return f"{step.error.type}: {step.error.message}"[:120]


@runs.command()
@with_app
@bulk
def cancel(app: Durable, run_ids: tuple[str, ...], yes: bool, dry_run: bool, as_json: bool,
           **where: Any) -> int:
    """Cancel runs: those given, or the unfinished ones the filters select."""
    selected = _select(app, run_ids, where, unfinished=True)
    return confirm_and_apply(
        "Cancel", selected, lambda chunk: app.cancel_runs(run_ids=chunk, actor=actor()),
        yes=yes or bool(run_ids), dry_run=dry_run, as_json=as_json)


@runs.command()
@with_app
@bulk
def replay(app: Durable, run_ids: tuple[str, ...], yes: bool, dry_run: bool, as_json: bool,
           **where: Any) -> int:
    """Start each selected run again, as a new run with the same events."""
    selected = _select(app, run_ids, where, unfinished=False)
    if len(run_ids) == 1 and not dry_run:
        new_id = app.replay(run_ids[0], actor=actor())
        print_json({"run_id": new_id}) if as_json else click.echo(new_id)
        return 0

    def apply(chunk: Sequence[str]) -> int:
        for run_id in chunk:
            app.replay(run_id, actor=actor())
        return len(chunk)

    return confirm_and_apply("Replay", selected, apply, yes=yes or bool(run_ids), dry_run=dry_run,
                             as_json=as_json)


@runs.command()
@with_app
@click.argument("run_id")
@click.option("--from-step", required=True, help="the first step to execute again")
@click.option("--data", "data_text", help="new event data, as a JSON object")
@click.option("--data-file", type=click.File(), help="new event data, from a JSON file (- for stdin)")
@json_option
def fork(app: Durable, run_id: str, from_step: str, data_text: str | None, data_file: Any,
         as_json: bool) -> int:
    """Start a copy of a run that reuses its steps before --from-step."""
    if data_text is not None and data_file is not None:
        raise click.UsageError("give --data or --data-file, not both")
    data = _json_object(data_file.read() if data_file else data_text, "--data")
    new_id = app.fork(run_id, from_step=from_step, data=data, actor=actor())
    print_json({"run_id": new_id}) if as_json else click.echo(new_id)
    return 0


def _json_object(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=what) from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"must be a JSON object, not {type(value).__name__}",
                                 param_hint=what)
    return value


def _select(app: Durable, run_ids: Sequence[str], where: dict[str, Any], *,
            unfinished: bool) -> list[str]:
    """The runs a bulk action acts on: the ids given, or every run the
    filters select (all pages), only the unfinished ones if asked."""
    given = {name: value for name, value in where.items() if value is not None}
    if run_ids:
        if given:
            raise click.UsageError("give run ids or filters, not both")
        return list(run_ids)
    if not given:
        raise click.UsageError("give run ids, or filters (--function, --status, --event, "
                               "--since, --until) to select runs")
    return [run.id for run in app.iter_runs(**where, unfinished=unfinished)]
