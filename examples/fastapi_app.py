"""FastAPI: worker threads in the app's lifespan, an async endpoint that
sends an event in its own transaction, and one that reports a run's status,
neither blocking the event loop.

    pip install 'pgdurable[fastapi,embedded]' httpx
    python examples/fastapi_app.py         # a demo through FastAPI's test client
    uvicorn --factory fastapi_app:create    # or serve it (from examples/)
"""

from __future__ import annotations

from typing import Any

import web_jobs
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

from pgdurable import Durable
from pgdurable.embedded import dsn_or_embedded
from pgdurable.integrations.starlette import lifespan


class VideoIn(BaseModel):
    title: str
    url: str


def create_api(durable: Durable, threads: int = 2) -> FastAPI:
    api = FastAPI(lifespan=lifespan(durable, threads=threads))

    @api.post("/videos", status_code=202)
    async def upload(video: VideoIn) -> dict[str, str]:
        async with durable.connection_async() as conn:  # the row and the event: one transaction
            event_id = await web_jobs.add_video_async(durable, conn, video.title, video.url)
        [run] = await durable.runs_for_event_async(event_id)
        return {"run_id": run.id, "status_url": f"/runs/{run.id}"}

    @api.get("/runs/{run_id}")
    async def run_status(run_id: str) -> dict[str, Any]:
        status = await web_jobs.run_status_async(durable, run_id)
        if status is None:
            raise HTTPException(404, f"no run {run_id}")
        return status

    return api


def create() -> FastAPI:
    return create_api(web_jobs.set_up(web_jobs.build(dsn_or_embedded())))


def main() -> None:
    with TestClient(create()) as client:  # runs the lifespan: workers start, then drain
        accepted = client.post("/videos", json={"title": "Talk", "url": "https://v.example/1"})
        print(accepted.status_code, accepted.json())
        final = web_jobs.poll(lambda url: client.get(url).json(), accepted.json()["status_url"])
        print(final["output"])


if __name__ == "__main__":
    main()
