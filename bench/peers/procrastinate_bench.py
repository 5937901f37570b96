"""Procrastinate 3.10 (psycopg) on the same Postgres: W1 drain and W2 latency.

    bench/peers/.venv-peers/bin/python bench/peers/procrastinate_bench.py [--jobs 5000]

Fewer jobs than the other W1 runs by default: at a few hundred jobs/s a
20,000-job drain takes over a minute and says nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from common_peers import drop_database, fresh_database, percentiles
from procrastinate import App, PsycopgConnector

DB = "bench_procrastinate"


async def w1(app: App, jobs: int, concurrency: int) -> float:
    @app.task(queue="w1", name="w1")
    async def handler(i: int) -> None:
        pass

    for start in range(0, jobs, 1000):
        await handler.batch_defer_async(*({"i": i} for i in range(start, min(start + 1000, jobs))))
    started = time.perf_counter()
    await app.run_worker_async(queues=["w1"], wait=False, concurrency=concurrency)
    return jobs / (time.perf_counter() - started)


async def w2(app: App, events: int, gap: float) -> dict[str, float]:
    started: dict[int, float] = {}
    done = asyncio.Event()

    @app.task(queue="w2", name="w2")
    async def handler(i: int) -> None:
        started[i] = time.perf_counter()
        if len(started) == events:
            done.set()

    worker = asyncio.create_task(app.run_worker_async(queues=["w2"], concurrency=4))
    await asyncio.sleep(1.0)
    sent: dict[int, float] = {}
    for i in range(events):
        sent[i] = time.perf_counter()
        await handler.defer_async(i=i)
        await asyncio.sleep(gap)
    await asyncio.wait_for(done.wait(), 60)
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    return percentiles([(started[i] - sent[i]) * 1000 for i in range(events)])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    dsn = fresh_database(DB)
    try:
        app = App(connector=PsycopgConnector(conninfo=dsn))
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            rate = await w1(app, args.jobs, args.concurrency)
            print(f"Procrastinate W1 drain: {args.jobs} jobs, {rate:,.0f} jobs/s "
                  f"(concurrency {args.concurrency})")
            p = await w2(app, args.events, 0.02)
            print(f"Procrastinate W2 latency: p50 {p['p50']:.2f} ms, p95 {p['p95']:.2f} ms, "
                  f"p99 {p['p99']:.2f} ms")
    finally:
        drop_database(DB)


if __name__ == "__main__":
    asyncio.run(main())
