"""The web dashboard (extra `dashboard`): an ASGI app over the management
API, to mount under any prefix of a Starlette or FastAPI app, or to serve
alone with `pgdurable dashboard`.

    from pgdurable.dashboard import create_app
    web.mount("/pgdurable", create_app(app, allow_actions=True, authorize=is_admin))
"""

from ._app import Authorize, create_app

__all__ = ["Authorize", "create_app"]
