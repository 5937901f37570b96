"""Flask: worker threads in the WSGI process, an endpoint that sends an
event, and one that reports a run's status.

    pip install 'pgdurable[flask,embedded]'
    python examples/flask_app.py             # a demo through Flask's test client
    flask --app flask_app:create run          # or serve it (from examples/)
"""

from __future__ import annotations

from typing import Any

import web_jobs
from flask import Flask, abort, request

from pgdurable import Durable
from pgdurable.embedded import dsn_or_embedded
from pgdurable.integrations.flask import init_app


def create_app(durable: Durable, threads: int = 2) -> Flask:
    app = Flask(__name__)
    init_app(app, durable, threads=threads)

    @app.post("/videos")
    def upload() -> tuple[dict[str, str], int]:
        body = request.get_json()
        with durable.connection() as conn:  # the row and the event: one transaction
            event_id = web_jobs.add_video(durable, conn, body["title"], body["url"])
        [run] = durable.runs_for_event(event_id)
        return {"run_id": run.id, "status_url": f"/runs/{run.id}"}, 202

    @app.get("/runs/<run_id>")
    def run_status(run_id: str) -> dict[str, Any]:
        status = web_jobs.run_status(durable, run_id)
        if status is None:
            abort(404)
        return status

    return app


def create() -> Flask:
    return create_app(web_jobs.set_up(web_jobs.build(dsn_or_embedded())))


def main() -> None:
    client = create().test_client()
    accepted = client.post("/videos", json={"title": "Talk", "url": "https://v.example/1"})
    print(accepted.status_code, accepted.json)
    final = web_jobs.poll(lambda url: client.get(url).json or {}, accepted.json["status_url"])
    print(final["output"])


if __name__ == "__main__":
    main()
