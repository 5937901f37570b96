"""Where W2's time goes once a send has committed: the path of a run sent
from another process (NOTIFY, then a claim), timed inside one process.

    python bench/w2_breakdown.py [--events 200]

The worker's listener, claim and handler are timestamped (by wrapping
`Worker._hear` and `Store.claim_runs`); for each event: the send, from its
return to the NOTIFY heard, from there to the claim sent, the claim's round
trip, and from the claim's answer to the handler's first line.
"""

from __future__ import annotations

import argparse
import bisect
import threading
import time
from collections.abc import Iterator
from typing import Any

from common import bench_app, describe, percentiles
from w2_latency import send_all

from pgdurable import Context, _store, _worker

heard: list[float] = []
claims: list[tuple[float, float]] = []  # (sent, answered) of each claim that got runs


def timestamped() -> None:
    hear, claim_runs = _worker.Worker._hear, _store.Store.claim_runs

    def hear_timed(self: Any, notifications: Iterator[Any]) -> None:
        def timed() -> Iterator[Any]:
            for notification in notifications:
                heard.append(time.perf_counter())
                yield notification
        hear(self, timed())

    def claim_timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent = time.perf_counter()
        rows = claim_runs(self, *args, **kwargs)
        if rows:
            claims.append((sent, time.perf_counter()))
        return rows

    _worker.Worker._hear = hear_timed  # type: ignore[method-assign]
    _store.Store.claim_runs = claim_timed  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    events = parser.parse_args().events
    timestamped()
    started: dict[int, tuple[float, float]] = {}  # event -> (sent, handler's first line)
    all_started = threading.Event()
    with bench_app() as (app, _):

        @app.function(id="latency", event="bench/w2")
        def latency(ctx: Context) -> None:
            started[ctx.event.data["i"]] = (ctx.event.data["sent"], time.perf_counter())
            if len(started) == events:
                all_started.set()

        app.start(threads=4, poll_interval=5.0, eager=False)
        app.send("bench/warm-up", {})
        time.sleep(1.0)  # let the worker go idle
        send_ms = send_all(app, events, 0.02)
        all_started.wait(60)
        app.stop()
    parts: dict[str, list[float]] = {name: [] for name in (
        "send()", "its return to the NOTIFY heard", "heard to the claim sent",
        "the claim's round trip", "its answer to the handler", "send to handler")}
    for i in range(events):
        sent, began = started[i]
        returned = sent + send_ms[i] / 1000
        at = heard[bisect.bisect_left(heard, sent)]
        claim = next(c for c in claims if c[0] >= at)
        for name, seconds in zip(parts, (returned - sent, at - returned, claim[0] - at,
                                         claim[1] - claim[0], began - claim[1], began - sent),
                                 strict=True):
            parts[name].append(seconds * 1000)
    for name, ms in parts.items():
        p = percentiles(ms)
        print(f"{name}: p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms")
    print(describe())


if __name__ == "__main__":
    main()
