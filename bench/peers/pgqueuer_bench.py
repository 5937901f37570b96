"""PgQueuer 1.6 (asyncpg, uvloop, batch 50) on the same Postgres: bulk enqueue, W1 drain and
W2 latency.

    bench/peers/.venv-peers/bin/python bench/peers/pgqueuer_bench.py [--jobs 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import uvloop
from common_peers import drop_database, fresh_database, percentiles
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job
from pgqueuer.types import QueueExecutionMode

DB = "bench_pgqueuer"


async def w1(dsn: str, jobs: int) -> tuple[float, float]:
    """Jobs enqueued per second (1,000 per call), then drained per second."""
    queries = Queries(AsyncpgDriver(await asyncpg.connect(dsn)))
    await queries.install()
    began = time.perf_counter()
    for start in range(0, jobs, 1000):
        n = min(1000, jobs - start)
        await queries.enqueue(["w1"] * n, [b"x"] * n, [0] * n)
    enqueued = jobs / (time.perf_counter() - began)
    qm = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(dsn))))

    @qm.entrypoint("w1")
    async def handler(job: Job) -> None:
        pass

    started = time.perf_counter()
    await qm.run(batch_size=50, mode=QueueExecutionMode.drain)
    return enqueued, jobs / (time.perf_counter() - started)


async def w2(dsn: str, events: int, gap: float) -> dict[str, float]:
    sender = Queries(AsyncpgDriver(await asyncpg.connect(dsn)))
    qm = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(dsn))))
    started: dict[int, float] = {}
    done = asyncio.Event()

    @qm.entrypoint("w2")
    async def handler(job: Job) -> None:
        started[int(job.payload or b"0")] = time.perf_counter()
        if len(started) == events:
            done.set()

    runner = asyncio.create_task(qm.run(batch_size=50))
    await asyncio.sleep(1.0)
    sent: dict[int, float] = {}
    for i in range(events):
        sent[i] = time.perf_counter()
        await sender.enqueue("w2", str(i).encode())
        await asyncio.sleep(gap)
    await asyncio.wait_for(done.wait(), 60)
    qm.shutdown.set()
    await runner
    return percentiles([(started[i] - sent[i]) * 1000 for i in range(events)])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    dsn = fresh_database(DB)
    try:
        enqueued, rate = await w1(dsn, args.jobs)
        print(f"PgQueuer bulk enqueue: {args.jobs} jobs, {enqueued:,.0f} jobs/s (1,000 per call)")
        print(f"PgQueuer W1 drain: {args.jobs} jobs, {rate:,.0f} jobs/s (batch 50)")
        p = await w2(dsn, args.events, 0.02)
        print(f"PgQueuer W2 latency: p50 {p['p50']:.2f} ms, p95 {p['p95']:.2f} ms, p99 {p['p99']:.2f} ms")
    finally:
        drop_database(DB)


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main())
