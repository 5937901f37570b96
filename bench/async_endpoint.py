"""Sends from an async endpoint: `app.send` (blocking the event loop) against
`await app.send_async`, under 50 concurrent requests.

    python bench/async_endpoint.py [--requests 1000] [--concurrency 50] [--rounds 3]
                                   [--db-delay MS]

A Starlette app served by uvicorn in a process of its own has two
endpoints, `POST /sync` and `POST /async`, each sending one event that
starts a run (no worker runs them); httpx sends the requests from this
process. Requests per second and latency percentiles, per endpoint, rounds
interleaved; meanwhile `GET /ping` (no database) is asked every 10 ms: its
latency shows whether the sends block the server's event loop.

`--db-delay MS` makes each send wait that long in Postgres (a trigger that
sleeps), as a database across a network would: the round trip a sync send
holds the event loop for.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from common import DSN, describe, percentiles

from pgdurable import Durable
from pgdurable.embedded import _free_port

SCHEMA = "bench_async_endpoint"


def build() -> Any:
    """The served app (imported by uvicorn in the server process)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    app = Durable(DSN, schema=SCHEMA, pool_size=10, async_pool_size=10)
    app.function(id="noted", event="bench/noted")(lambda ctx: None)

    async def sync_send(request: Request) -> JSONResponse:
        [event_id] = app.send("bench/noted", await request.json())  # blocks the loop
        return JSONResponse({"event_id": event_id})

    async def async_send(request: Request) -> JSONResponse:
        [event_id] = await app.send_async("bench/noted", await request.json())
        return JSONResponse({"event_id": event_id})

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({})

    return Starlette(routes=[Route("/sync", sync_send, methods=["POST"]),
                             Route("/async", async_send, methods=["POST"]),
                             Route("/ping", ping)])


async def load(
    url: str, requests: int, concurrency: int
) -> tuple[float, list[float], list[float]]:
    """`requests` POSTs from `concurrency` clients: elapsed seconds, their
    latencies, and those of the pings asked meanwhile."""
    latencies: list[float] = []
    pings: list[float] = []
    counter = iter(range(requests))
    done = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        for n in counter:
            began = time.perf_counter()
            response = await http.post(url, json={"n": n})
            response.raise_for_status()
            latencies.append(time.perf_counter() - began)

    async def pinger(http: httpx.AsyncClient) -> None:
        ping = url.rsplit("/", 1)[0] + "/ping"
        while not done.is_set():
            began = time.perf_counter()
            (await http.get(ping)).raise_for_status()
            pings.append(time.perf_counter() - began)
            await asyncio.sleep(0.01)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http, \
            httpx.AsyncClient(timeout=60) as other:
        await http.post(url, json={"n": -1})  # warm: connections, the pools, prepared statements
        pinging = asyncio.create_task(pinger(other))
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        done.set()
        await pinging
        return elapsed, latencies, pings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db-delay", type=float, default=0.0, metavar="MS")
    args = parser.parse_args()
    setup = Durable(DSN, schema=SCHEMA)
    setup.migrate()
    if args.db_delay:
        with setup.connection() as conn:
            conn.execute(_DELAY.format(schema=SCHEMA, seconds=args.db_delay / 1000))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "async_endpoint:build", "--port", str(port),
         "--log-level", "warning"], cwd=Path(__file__).parent)
    try:
        _wait_for_server(port)
        for round_ in range(1, args.rounds + 1):
            for path in ("/sync", "/async"):
                elapsed, latencies, pings = asyncio.run(load(
                    f"http://127.0.0.1:{port}{path}", args.requests, args.concurrency))
                p50, p99 = _ms(latencies)
                ping50, ping99 = _ms(pings)
                print(f"round {round_} POST {path:6} {args.requests / elapsed:7,.0f} req/s, "
                      f"p50 {p50:6.1f} ms, p99 {p99:6.1f} ms; GET /ping meanwhile p50 "
                      f"{ping50:5.1f} ms, p99 {ping99:5.1f} ms "
                      f"({args.requests} requests, {args.concurrency} concurrent, "
                      f"database delay {args.db_delay} ms)")
    finally:
        server.terminate()
        server.wait(10)
        with setup.connection() as conn:
            conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        setup.stop()
    print(describe())


# A round trip's worth of waiting in each send, without using a CPU.
_DELAY = """
CREATE FUNCTION {schema}.bench_delay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
CREATE TRIGGER bench_delay AFTER INSERT ON {schema}.events
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.bench_delay();
"""


def _ms(seconds: list[float]) -> tuple[float, float]:
    """p50 and p99, in milliseconds."""
    cut = percentiles(seconds)
    return cut["p50"] * 1000, cut["p99"] * 1000


def _wait_for_server(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    main()
