"""Clip identification (seed 003): create a video record, call an external
clips API with a bearer token (a local fake that sometimes answers 503),
save the clips, and let the web app poll the video's status.

    python examples/clips.py
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from psycopg import sql

from pgdurable import Context, Durable, RetryAfterError
from pgdurable.embedded import dsn_or_embedded

API_TOKEN = "secret-token"


class FakeClipsAPI(BaseHTTPRequestHandler):
    """Answers POST /identify like the seed's backend; 503 now and then."""

    failure_rate = 0.3

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {API_TOKEN}":
            self._answer(401, {"error": "unauthorized"})
        elif random.random() < self.failure_rate:
            self._answer(503, {"error": "busy"})
        else:
            clips = [{"start": 10.0 * i, "end": 10.0 * i + 8, "title": f"Clip {i}",
                      "virality_score": 0.9 - i / 10} for i in range(3)]
            self._answer(200, {"identified_clips": clips, "total_clips": len(clips),
                               "video_duration": 95, "s3_path": body["s3_key_yt"] + "/clips"})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_fake_api() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeClipsAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def call_api(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            raise RetryAfterError("clips API busy", 0.2) from exc
        raise


def build(dsn: str, api_url: str, schema: str = "clips") -> Durable:
    app = Durable(dsn, schema=schema, retry_backoff=("100ms", "1s"))
    videos, clips = sql.Identifier(schema, "videos"), sql.Identifier(schema, "clips")

    def create_video_record(user_id: str, youtube_url: str) -> dict[str, str]:
        video_id = str(uuid.uuid4())
        s3_key = f"youtube-videos/{video_id}/yt"
        with app.connection() as conn:
            conn.execute(sql.SQL("INSERT INTO {} (id, user_id, youtube_url, s3_key, status) "
                                 "VALUES (%s, %s, %s, %s, 'processing')").format(videos),
                         (video_id, user_id, youtube_url, s3_key))
        return {"video_id": video_id, "s3_key": s3_key}

    def save_clips(video_id: str, response: dict[str, Any]) -> int:
        with app.connection() as conn:
            conn.execute(sql.SQL("UPDATE {} SET total_clips = %s, status = 'done' WHERE id = %s")
                         .format(videos), (response["total_clips"], video_id))
            with conn.cursor() as cur:
                cur.executemany(sql.SQL("INSERT INTO {} (video_id, start_s, end_s, title) "
                                        "VALUES (%s, %s, %s, %s)").format(clips),
                                [(video_id, c["start"], c["end"], c["title"])
                                 for c in response["identified_clips"]])
        return len(response["identified_clips"])

    @app.function(id="identify-clips", event="video/identify.clips", retries=5)
    def identify_clips(ctx: Context) -> dict[str, Any]:
        data = ctx.event.data
        video = ctx.step.run("create-video-record", create_video_record,
                             data["user_id"], data["youtube_url"])
        response = ctx.step.run("call-identify-clips-api", call_api, api_url, {
            "youtube_url": data["youtube_url"], "s3_key_yt": video["s3_key"],
            "prompt": data.get("prompt", "")})
        saved = ctx.step.run("save-clips-to-database", save_clips, video["video_id"], response)
        return {"video_id": video["video_id"], "total_clips": saved}

    return app


def create_tables(app: Durable) -> None:
    with app.connection() as conn:
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id uuid PRIMARY KEY, user_id text, youtube_url text, "
            "s3_key text, status text, total_clips int)").format(sql.Identifier(app.schema, "videos")))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (video_id uuid, start_s real, end_s real, title text)"
        ).format(sql.Identifier(app.schema, "clips")))


def video_status(app: Durable, run_id: str) -> dict[str, Any]:
    """What the polling endpoint of the seed returns for a request."""
    run = app.get_run(run_id)
    if run is None:
        return {"status": "unknown"}
    answer: dict[str, Any] = {"status": run.status}
    if run.status == "completed":
        answer.update(run.output)
    elif run.error is not None:
        answer["error"] = run.error.message
    return answer


def main() -> None:
    api = start_fake_api()
    app = build(dsn_or_embedded(), f"http://127.0.0.1:{api.server_port}/identify")
    app.migrate()
    create_tables(app)
    [event_id] = app.send("video/identify.clips", {
        "user_id": "u1", "youtube_url": "https://youtu.be/example", "prompt": "funny bits"})
    [run] = app.runs_for_event(event_id)
    print("polling:", video_status(app, run.id))
    app.start(threads=2)
    try:
        app.wait_for_run(run.id, timeout=60)
        print("polling:", video_status(app, run.id))
    finally:
        app.stop()
        api.shutdown()


if __name__ == "__main__":
    main()
