"""W2 latency: an idle worker; events sent 20 ms apart; send -> handler start.

    python bench/w2_latency.py [--events 200] [--gap 0.02] [--no-eager]

The sender and the worker share a process so one clock times both; the
interval starts before `send` (its round trip included) and ends at the
first line of the handler. By default the worker starts the runs this
process sends eagerly (claimed in the sending transaction); `--no-eager`
measures the path of a run sent from another process: NOTIFY, then a claim.
"""

from __future__ import annotations

import argparse
import threading
import time

from common import bench_app, describe, percentiles

from pgdurable import Context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-eager", dest="eager", action="store_false")
    args = parser.parse_args()

    started: dict[int, float] = {}
    all_started = threading.Event()
    with bench_app() as (app, _):

        @app.function(id="latency", event="bench/w2")
        def latency(ctx: Context) -> None:
            started[ctx.event.data["i"]] = time.perf_counter()
            if len(started) == args.events:
                all_started.set()

        # the poll cannot help: without eager starts, NOTIFY must
        app.start(threads=args.threads, poll_interval=5.0, eager=args.eager)
        app.send("bench/warm-up", {})
        time.sleep(1.0)  # let the worker go idle
        sent: dict[int, float] = {}
        send_ms: list[float] = []
        for i in range(args.events):
            sent[i] = time.perf_counter()
            app.send("bench/w2", {"i": i})
            send_ms.append((time.perf_counter() - sent[i]) * 1000)
            time.sleep(args.gap)
        all_started.wait(60)
        app.stop()
    ms = [(started[i] - sent[i]) * 1000 for i in range(args.events)]
    p = percentiles(ms)
    mode = "" if args.eager else " (no eager start)"
    print(f"W2 latency send->start{mode} over {args.events} events {args.gap * 1000:.0f} ms apart: "
          f"p50 {p['p50']:.2f} ms, p95 {p['p95']:.2f} ms, p99 {p['p99']:.2f} ms, max {p['max']:.2f} ms "
          f"(of which send() itself p50 {percentiles(send_ms)['p50']:.2f} ms; {describe()})")


if __name__ == "__main__":
    main()
