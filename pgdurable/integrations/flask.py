"""Flask: worker threads in the WSGI process, stopped when it exits.

    pgdurable.integrations.flask.init_app(flask_app, durable, threads=4)
"""

from __future__ import annotations

import atexit

from flask import Flask

from .._app import Durable


def init_app(flask_app: Flask, durable: Durable, *, threads: int = 4,
             stop_timeout: float = 30.0) -> None:
    """Make `durable` the app's (`flask_app.extensions["pgdurable"]`), start
    `threads` worker threads (none with threads=0: run `pgdurable worker`
    instead) and drain them when the process exits."""
    flask_app.extensions["pgdurable"] = durable
    if threads > 0:
        durable.start(threads=threads)
        atexit.register(durable.stop, stop_timeout)
