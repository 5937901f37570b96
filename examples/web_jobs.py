"""The jobs behind the web examples (fastapi_app.py, flask_app.py,
django_app.py): an uploaded video is transcribed and summarised in the
background while the page polls its run (the polling pattern of seed 003).
The async variants serve FastAPI's `async def` endpoints.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from pgdurable import Context, Durable


def transcribe(url: str) -> str:
    """Stand-in for a speech-to-text API."""
    return f"A talk found at {url}. It explains durable execution. It ends with questions."


def summarize(transcript: str) -> str:
    """Stand-in for an LLM: the first two sentences."""
    return ". ".join(transcript.split(". ")[:2]) + "."


def build(dsn: str, schema: str = "web_jobs") -> Durable:
    app = Durable(dsn, schema=schema)
    videos = sql.Identifier(schema, "videos")

    def save(conn: psycopg.Connection[Any], video_id: str, summary: str) -> None:
        conn.execute(sql.SQL("UPDATE {} SET summary = %s WHERE id = %s").format(videos),
                     (summary, video_id))

    @app.function(id="summarize-video", event="video/uploaded", retries=2)
    def summarize_video(ctx: Context) -> dict[str, str]:
        transcript = ctx.step.run("transcribe", transcribe, ctx.event.data["url"])
        summary = ctx.step.run("summarize", summarize, transcript)
        ctx.step.transaction("save", save, ctx.event.data["video_id"], summary)
        return {"video_id": ctx.event.data["video_id"], "summary": summary}

    return app


def set_up(app: Durable) -> Durable:
    """Migrate pgdurable's schema and create the app's table; returns `app`."""
    app.migrate()
    with app.connection() as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, title text, "
                             "url text, summary text)").format(sql.Identifier(app.schema, "videos")))
    return app


def add_video(app: Durable, conn: psycopg.Connection[Any], title: str, url: str) -> str:
    """In the caller's transaction: the video's row and its event, which
    exist together or not at all. Returns the event id."""
    insert, row = _new_video(app, title, url)
    conn.execute(insert, row)
    [event_id] = app.send("video/uploaded", {"video_id": row[0], "url": url}, conn=conn)
    return event_id


async def add_video_async(
    app: Durable, conn: psycopg.AsyncConnection[Any], title: str, url: str
) -> str:
    """`add_video`, in the caller's async transaction."""
    insert, row = _new_video(app, title, url)
    await conn.execute(insert, row)
    [event_id] = await app.send_async("video/uploaded", {"video_id": row[0], "url": url},
                                      conn=conn)
    return event_id


def _new_video(app: Durable, title: str, url: str) -> tuple[sql.Composed, tuple[str, str, str]]:
    """A new video's INSERT and its row (a fresh id first)."""
    insert = sql.SQL("INSERT INTO {} (id, title, url) VALUES (%s, %s, %s)").format(
        sql.Identifier(app.schema, "videos"))
    return insert, (f"vid_{uuid.uuid4().hex[:8]}", title, url)


def run_status(app: Durable, run_id: str) -> dict[str, Any] | None:
    """What the status endpoint answers: the run as JSON, None if there is none."""
    try:
        run = app.get_run(run_id)
    except ValueError:  # not a run id at all
        return None
    return None if run is None else run.to_dict()


async def run_status_async(app: Durable, run_id: str) -> dict[str, Any] | None:
    """`run_status`, for an async endpoint."""
    try:
        run = await app.get_run_async(run_id)
    except ValueError:
        return None
    return None if run is None else run.to_dict()


def poll(get_json: Callable[[str], dict[str, Any]], status_url: str, timeout: float = 30) -> dict[str, Any]:
    """What the page does: ask for the run's status until it is final."""
    deadline = time.monotonic() + timeout
    while True:
        status = get_json(status_url)
        print("status:", status["status"])
        if status["status"] in ("completed", "failed", "cancelled", "skipped"):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"{status_url} still {status['status']} after {timeout} s")
        time.sleep(0.2)
