"""Single sends, without HTTP: `send` one after another against `send_async`
from concurrent tasks, with and without runs to create (and so a NOTIFY).

    python bench/sends.py [--sends 2000] [--concurrency 50] [--rounds 3]

Sends per second, latency percentiles and the process's CPU time per send.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from common import bench_app, describe, percentiles

from pgdurable import Durable


def report(what: str, sends: int, elapsed: float, cpu: float, latencies: list[float]) -> None:
    cut = percentiles(latencies)
    print(f"{what}: {sends / elapsed:7,.0f} sends/s, p50 {cut['p50'] * 1000:5.1f} ms, "
          f"p99 {cut['p99'] * 1000:6.1f} ms, cpu {cpu / sends * 1e6:4.0f} us/send")


def serial(app: Durable, sends: int) -> tuple[float, float, list[float]]:
    latencies = []
    began, cpu = time.perf_counter(), time.process_time()
    for n in range(sends):
        sent = time.perf_counter()
        app.send("bench/noted", {"n": n})
        latencies.append(time.perf_counter() - sent)
    return time.perf_counter() - began, time.process_time() - cpu, latencies


async def concurrent(app: Durable, sends: int, tasks: int) -> tuple[float, float, list[float]]:
    latencies: list[float] = []
    numbers = iter(range(sends))

    async def sender() -> None:
        for n in numbers:
            sent = time.perf_counter()
            await app.send_async("bench/noted", {"n": n})
            latencies.append(time.perf_counter() - sent)

    await app.send_async("bench/noted", {"n": -1})  # the pool opens
    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender() for _ in range(tasks)))
    elapsed = time.perf_counter() - began, time.process_time() - cpu
    await app.aclose()
    return *elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for runs in (True, False):
        with bench_app(async_pool_size=10) as (app, _):
            if runs:
                app.function(id="noted", event="bench/noted")(lambda ctx: None)
            kind = "with runs (NOTIFY)" if runs else "no runs"
            app.send("bench/noted", {"n": -1})  # the pool opens
            ways: list[tuple[str, Callable[[], tuple[float, float, list[float]]]]] = [
                ("send, one after another", lambda: serial(app, args.sends)),
                (f"send_async, {args.concurrency} tasks",
                 lambda: asyncio.run(concurrent(app, args.sends, args.concurrency)))]
            for round_ in range(1, args.rounds + 1):
                for name, way in ways:
                    report(f"round {round_}, {kind}, {name}", args.sends, *way())
    print(describe())


if __name__ == "__main__":
    main()
