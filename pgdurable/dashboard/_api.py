"""The JSON routes: runs as list_runs selects them, one run with its steps,
and the actions (cancel, replay, fork)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._durations import parse_moment
from ..errors import ConfigurationError, DurableError, InvalidEventError, NotFoundError
from ._app import Dashboard, who

ACTIONS = ("cancel", "replay", "fork")
FILTERS = ("function", "status", "event", "since", "until", "parent", "forked_from")
MAX_LIMIT = 1000


class Api:
    def __init__(self, board: Dashboard) -> None:
        self.board = board

    async def runs(self, request: Request) -> Response:
        """GET /api/runs: {"runs": [...], "after": the id for the next page or null}."""
        filters, limit, after = run_query(request.query_params)
        page = await run_in_threadpool(self.board.durable.list_runs, **filters, limit=limit,
                                       after=after)
        return JSONResponse({"runs": [r.to_dict() for r in page],
                             "after": page[-1].id if len(page) == limit else None})

    async def run(self, request: Request) -> Response:
        """GET /api/runs/{id}: the run, its error's traceback, and its `steps`."""
        return JSONResponse(await run_in_threadpool(self._run_document,
                                                    request.path_params["run_id"]))

    def _run_document(self, run_id: str) -> dict[str, Any]:
        run = self.board.durable.get_run(run_id)
        if run is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        steps = self.board.durable.get_steps(run.id)
        return run.to_dict(traceback=True) | {"steps": [s.to_dict() for s in steps]}

    async def act(self, request: Request) -> Response:
        """POST /api/runs/{id}/cancel|replay|fork (fork: {"from_step", "data"})."""
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise NotFoundError(f"no action {action!r}: one of {', '.join(ACTIONS)}")
        if (why := await self.board.refusal(request, action)) is not None:
            return JSONResponse({"error": why}, status_code=403)
        body = await _json_body(request) if action == "fork" else {}
        return JSONResponse(await run_in_threadpool(
            perform, self.board, action, request.path_params["run_id"], body, who(request)))

    async def healthz(self, request: Request) -> Response:
        """Ready, as app.health() says (503 if not), and the live workers."""
        health = await run_in_threadpool(self.board.durable.health)
        body: dict[str, Any] = {"ok": health.ready, **health.to_dict()}
        try:
            if health.ready:
                workers = await run_in_threadpool(self.board.durable.list_workers)
                return JSONResponse({**body, "live_workers": sum(w.live for w in workers)})
        except DurableError as exc:
            health.problems.append(str(exc))
        return JSONResponse({**body, "ok": False, "problems": health.problems,
                             "error": "; ".join(health.problems)}, status_code=503)


def perform(board: Dashboard, action: str, run_id: str, body: Mapping[str, Any],
            actor: str) -> dict[str, Any]:
    """Do one action on one run, as `actor`; what it answers, as JSON."""
    durable = board.durable
    if action == "cancel":
        return {"cancelled": durable.cancel(run_id, actor=actor)}
    if action == "replay":
        return {"run_id": durable.replay(run_id, actor=actor)}
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise ConfigurationError("fork: data must be a JSON object")
    return {"run_id": durable.fork(run_id, from_step=body.get("from_step"),  # type: ignore[arg-type]
                                   data=data, actor=actor)}


def run_query(params: Mapping[str, str]) -> tuple[dict[str, Any], int, str | None]:
    """list_runs' filters, limit and keyset from query parameters (empty
    ones are absent); ConfigurationError names a bad one."""
    given = {k: v.strip() for k, v in params.items() if k in FILTERS and v.strip()}
    now = datetime.now(UTC)
    filters: dict[str, Any] = {k: parse_moment(v, now=now) if k in ("since", "until") else v
                               for k, v in given.items()}
    try:
        limit = int(params.get("limit") or 50)
    except ValueError:
        raise ConfigurationError(f"limit {params.get('limit')!r} is not a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ConfigurationError(f"limit must be from 1 to {MAX_LIMIT}")
    return filters, limit, params.get("after") or None


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigurationError("the body must be a JSON object")
    return body


async def _error(request: Request, exc: Exception) -> Response:
    """A refused input (400), something not found (404), or a database that
    cannot be used (503): JSON under /api/, a page elsewhere."""
    status = (404 if isinstance(exc, NotFoundError)
              else 400 if isinstance(exc, ConfigurationError | InvalidEventError) else 503)
    if request.url.path.startswith(request.scope.get("root_path", "") + "/api/"):
        return JSONResponse({"error": str(exc)}, status_code=status)
    board: Dashboard = request.app.state.board
    return board.templates.TemplateResponse(request, "error.html", {"message": str(exc)},
                                            status_code=status)


ERRORS: dict[Any, Any] = {DurableError: _error}
