"""The HTML pages: overview, runs, a run's story, an event, functions,
workers; and the forms of the actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .._format import format_duration, format_span, format_time
from .._runs import Run, RunStatus, StepInfo
from ..errors import ConfigurationError, NotFoundError
from ._api import ACTIONS, FILTERS, perform, run_query
from ._app import Dashboard, who

RECENT_FAILURES = 8
RELATED = 50  # children and forks shown on a run's page


class Pages:
    def __init__(self, board: Dashboard) -> None:
        self.board = board
        self.durable = board.durable

    def _render(self, request: Request, template: str, status_code: int = 200,
                **context: Any) -> Response:
        context |= {"allow_actions": self.board.allow_actions,
                    "notice": request.query_params.get("notice")}
        return self.board.templates.TemplateResponse(request, template, context,
                                                     status_code=status_code)

    def overview(self, request: Request) -> Response:
        now = datetime.now(UTC)
        hour = self.durable.count_runs(now - timedelta(hours=1))
        day = self.durable.count_runs(now - timedelta(days=1))
        queue = self.durable.queue_summary()
        functions = sorted(set(day.by_function) | set(queue.counts.by_function))
        return self._render(
            request, "overview.html", hour=hour, day=day, queue=queue, functions=functions,
            failures=self.durable.list_runs(status="failed", limit=RECENT_FAILURES),
            workers=self.durable.list_workers(), refresh=5)

    def runs(self, request: Request) -> Response:
        search = request.query_params.get("q", "").strip()
        if search:
            return self._search(request, search)
        filters, limit, after = run_query(request.query_params)
        page = self.durable.list_runs(**filters, limit=limit, after=after)
        given = {k: v for k, v in request.query_params.items() if k in FILTERS and v.strip()}
        return self._render(
            request, "runs.html", page=page, given=given, limit=limit,
            next_page=urlencode(given | {"after": page[-1].id}) if len(page) == limit else None,
            statuses=RunStatus.__args__,  # type: ignore[attr-defined]
            function_ids=[f.id for f in self.durable.list_functions()],
            bulk_query=urlencode(given), refresh=5 if after is None else None)

    def _search(self, request: Request, text: str) -> Response:
        """A run id or an event id: its page."""
        try:
            if self.durable.get_run(text) is not None:
                return RedirectResponse(request.url_for("run", run_id=text), status_code=303)
        except ConfigurationError:
            pass  # not a run id
        if self.durable.get_event(text) is not None:
            return RedirectResponse(request.url_for("event", event_id=text), status_code=303)
        raise NotFoundError(f"no run and no event has the id {text!r}")

    def run(self, request: Request) -> Response:
        run = self.durable.get_run(request.path_params["run_id"])
        if run is None:
            raise NotFoundError(f"no run with id {request.path_params['run_id']!r}")
        steps = self.durable.get_steps(run.id)
        events = [self.durable.get_event(e) for e in run.event_ids[:5]]
        return self._render(
            request, "run.html", run=run, steps=steps, bars=waterfall(run, steps),
            waits=self.durable.get_waits(run.id) if not run.is_terminal else [],
            children=self.durable.list_runs(parent=run.id, limit=RELATED),
            forks=self.durable.list_runs(forked_from=run.id, limit=RELATED),
            events=[e for e in events if e is not None],
            refresh=None if run.is_terminal else 2)

    def event(self, request: Request) -> Response:
        event_id = request.path_params["event_id"]
        event = self.durable.get_event(event_id)
        if event is None:
            raise NotFoundError(f"no event with id {event_id!r}")
        return self._render(request, "event.html", event=event,
                            runs=self.durable.runs_for_event(event_id))

    def functions(self, request: Request) -> Response:
        return self._render(request, "functions.html", functions=self.durable.list_functions())

    def workers(self, request: Request) -> Response:
        return self._render(request, "workers.html", workers=self.durable.list_workers(),
                            refresh=5)

    async def act(self, request: Request) -> Response:
        """POST /runs/{id}/cancel|replay|fork from the run's page."""
        action, run_id = request.path_params["action"], request.path_params["run_id"]
        if action not in ACTIONS:
            raise NotFoundError(f"no action {action!r}: one of {', '.join(ACTIONS)}")
        if (why := await self.board.refusal(request, action)) is not None:
            return self._render(request, "error.html", status_code=403, message=why)
        form = await _form(request)
        body: dict[str, Any] = {"from_step": form.get("from_step")}
        if form.get("data", "").strip():
            try:
                body["data"] = json.loads(form["data"])
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"the new data is not JSON: {exc}") from None
        done = await run_in_threadpool(perform, self.board, action, run_id, body, who(request))
        target = done.get("run_id", run_id)
        notice = {"cancel": "cancel requested" if done.get("cancelled") else "already finished",
                  "replay": f"replay of {run_id}", "fork": f"fork of {run_id}"}[action]
        url = request.url_for("run", run_id=target).include_query_params(notice=notice)
        return RedirectResponse(url, status_code=303)

    async def bulk(self, request: Request) -> Response:
        """GET: how many runs the filters select for a bulk cancel or replay,
        to confirm; POST: do it."""
        params = dict(request.query_params) | (await _form(request) if request.method == "POST"
                                               else {})
        action = params.get("action", "")
        if action not in ("cancel", "replay"):
            raise ConfigurationError("bulk actions are cancel and replay")
        if (why := await self.board.refusal(request, action)) is not None:
            return self._render(request, "error.html", status_code=403, message=why)
        filters, _, _ = run_query(params)
        if not filters:
            raise ConfigurationError("a bulk action needs at least one filter")
        ids = await run_in_threadpool(self._select, filters, action)
        if request.method == "GET":
            given = {k: v for k, v in params.items() if k in FILTERS and v.strip()}
            return self._render(request, "bulk.html", action=action, count=len(ids), given=given)
        done = await run_in_threadpool(self._apply, action, ids, who(request))
        url = request.url_for("runs").include_query_params(notice=f"{action}: {done} runs")
        return RedirectResponse(url, status_code=303)

    def _select(self, filters: dict[str, Any], action: str) -> list[str]:
        return [r.id for r in self.durable.iter_runs(**filters, unfinished=action == "cancel")]

    def _apply(self, action: str, ids: list[str], actor: str) -> int:
        if action == "cancel":
            return self.durable.cancel_runs(run_ids=ids, actor=actor) if ids else 0
        for run_id in ids:
            self.durable.replay(run_id, actor=actor)
        return len(ids)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (the only kind the pages send), last value wins."""
    fields = parse_qs((await request.body()).decode(), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


@dataclass(frozen=True, slots=True)
class Bar:
    """A step on the run's waterfall: where it starts and how wide it is, in
    % of the run's span; `reused`: a fork took it from the run it forked."""

    step: StepInfo
    left: float
    width: float
    reused: bool = False


def waterfall(run: Run, steps: list[StepInfo]) -> list[Bar]:
    """The bars of a run's steps over the time its own steps took (a fork's
    reused steps, which ran before it existed, sit at its start)."""
    reused = {s.key for s in steps if run.forked_from and s.finished_at < run.created_at}
    own = [s for s in steps if s.key not in reused]
    if not own:
        return [Bar(s, 0.0, 0.4, True) for s in steps]
    start = min(s.started_at for s in own)
    end = max([s.finished_at for s in own] + ([run.finished_at] if run.finished_at else []))
    span = max((end - start).total_seconds(), 1e-3)
    return [Bar(s, 0.0, 0.4, True) if s.key in reused else
            Bar(s, 100 * (s.started_at - start).total_seconds() / span,
                max(0.4, 100 * (s.finished_at - s.started_at).total_seconds() / span))
            for s in steps]


def _took(run_or_step: Any) -> str:
    return format_span(run_or_step.started_at, run_or_step.finished_at) or "-"


def _age(delta: timedelta | None) -> str:
    return "-" if delta is None else format_duration(delta.total_seconds())


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _when(at: datetime | None) -> str:
    return format_time(at) or "-"


TEMPLATE_FILTERS: dict[str, Callable[..., str]] = {
    "when": _when, "took": _took, "age": _age, "pretty": _pretty}
