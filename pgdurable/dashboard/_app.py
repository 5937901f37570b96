"""create_app: the routes, and what every action goes through (the switch,
`authorize`, a same-origin check, and who the audit log names)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .._app import Durable

Authorize = Callable[[Request, str], bool | Awaitable[bool]]
"""`authorize(request, action)`: whether this request may do `action`
("cancel", "replay" or "fork"; bulk actions ask once for the whole set)."""

HERE = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the pages and the API share."""

    durable: Durable
    allow_actions: bool
    authorize: Authorize | None
    templates: Jinja2Templates

    async def refusal(self, request: Request, action: str) -> str | None:
        """Why `request` may not do `action`, or None if it may."""
        if not self.allow_actions:
            return "actions are off: create_app(..., allow_actions=True) turns them on"
        origin = request.headers.get("origin")
        if request.headers.get("sec-fetch-site") == "cross-site" or (
                origin is not None and origin.split("://")[-1] != request.url.netloc):
            return "actions are only taken from the dashboard's own pages"
        if self.authorize is not None:
            allowed = self.authorize(request, action)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                return f"not allowed to {action}"
        return None


def who(request: Request) -> str:
    """Who the audit log says acted: the authenticated user, if the host app
    set one (Starlette's AuthenticationMiddleware), else the client's address."""
    user = request.scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        return str(getattr(user, "display_name", None) or getattr(user, "identity", user))
    host = request.client.host if request.client else "unknown"
    return f"dashboard:{host}"


def create_app(
    durable: Durable, allow_actions: bool = False, authorize: Authorize | None = None,
) -> Starlette:
    """The dashboard of `durable`, read-only unless `allow_actions`; then
    `authorize(request, action)` (sync or async) may still refuse an
    action, which answers 403. Links and assets follow where it is mounted."""
    from . import _api, _pages

    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(_pages.TEMPLATE_FILTERS)
    board = Dashboard(durable, allow_actions, authorize, templates)
    page = _pages.Pages(board)
    api = _api.Api(board)
    routes = [
        Route("/", page.overview, name="overview"),
        Route("/runs", page.runs, name="runs"),
        Route("/runs/{run_id}", page.run, name="run"),
        Route("/runs/{run_id}/{action}", page.act, methods=["POST"], name="act"),
        Route("/bulk", page.bulk, methods=["GET", "POST"], name="bulk"),
        Route("/events/{event_id:path}", page.event, name="event"),
        Route("/functions", page.functions, name="functions"),
        Route("/workers", page.workers, name="workers"),
        Route("/healthz", api.healthz, name="healthz"),
        Route("/api/runs", api.runs, name="api_runs"),
        Route("/api/runs/{run_id}", api.run, name="api_run"),
        Route("/api/runs/{run_id}/{action}", api.act, methods=["POST"], name="api_act"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers=_api.ERRORS)
    app.state.board = board
    return app

