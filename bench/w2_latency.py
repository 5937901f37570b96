"""W2 latency: an idle worker; events sent 20 ms apart; send -> handler start.

    python bench/w2_latency.py [--events 200] [--gap 0.02] [--no-eager | --sender-process]

The interval starts before `send` (its round trip included) and ends at
the first line of the handler. By default sender and worker share a
process, and the worker starts the runs this process sends eagerly
(claimed in the sending transaction); `--no-eager` takes the path of a run
sent from another process (NOTIFY, then a claim) in one process;
`--sender-process` sends from a separate process, each event carrying the
time it was sent by the host's monotonic clock (CLOCK_MONOTONIC, one for
every process), so the worker's process times each run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

from common import DSN, bench_app, describe, percentiles

from pgdurable import Context, Durable


def send_all(app: Durable, events: int, gap: float) -> list[float]:
    """Send `events` events `gap` apart, each with its send time; the ms each send took."""
    send_ms: list[float] = []
    for i in range(events):
        sent = time.perf_counter()
        app.send("bench/w2", {"i": i, "sent": sent})
        send_ms.append((time.perf_counter() - sent) * 1000)
        time.sleep(gap)
    return send_ms


def sender(schema: str, events: int, gap: float) -> None:
    """The sender process: prints the p50 and p99 of its sends."""
    app = Durable(DSN, schema=schema)
    app.function(id="latency", event="bench/w2")(lambda ctx: None)
    app.send("bench/warm-up", {})  # the pool's first connection, out of the timing
    sends = percentiles(send_all(app, events, gap))
    print(sends["p50"], sends["p99"])
    app.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-eager", dest="eager", action="store_false")
    parser.add_argument("--sender-process", action="store_true")
    parser.add_argument("--send-to", metavar="SCHEMA", help=argparse.SUPPRESS)  # the sender's own run
    args = parser.parse_args()
    if args.send_to:
        sender(args.send_to, args.events, args.gap)
        return

    latency_ms: dict[int, float] = {}
    all_started = threading.Event()
    with bench_app() as (app, schema):

        @app.function(id="latency", event="bench/w2")
        def latency(ctx: Context) -> None:
            latency_ms[ctx.event.data["i"]] = (time.perf_counter() - ctx.event.data["sent"]) * 1000
            if len(latency_ms) == args.events:
                all_started.set()

        # the poll cannot help: without eager starts, NOTIFY must
        app.start(threads=args.threads, poll_interval=5.0, eager=args.eager)
        app.send("bench/warm-up", {})
        time.sleep(1.0)  # let the worker go idle
        if args.sender_process:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--send-to", schema,
                 "--events", str(args.events), "--gap", str(args.gap)],
                check=True, capture_output=True, text=True).stdout
            send_p50, send_p99 = map(float, out.split()[-2:])
        else:
            sends = percentiles(send_all(app, args.events, args.gap))
            send_p50, send_p99 = sends["p50"], sends["p99"]
        all_started.wait(60)
        app.stop()
    p = percentiles([latency_ms[i] for i in range(args.events)])
    mode = (" (sent from another process)" if args.sender_process
            else "" if args.eager else " (no eager start)")
    print(f"W2 latency send->start{mode} over {args.events} events {args.gap * 1000:.0f} ms apart: "
          f"p50 {p['p50']:.2f} ms, p95 {p['p95']:.2f} ms, p99 {p['p99']:.2f} ms, max {p['max']:.2f} ms "
          f"(of which send() itself p50 {send_p50:.2f} ms, p99 {send_p99:.2f} ms; {describe()})")


if __name__ == "__main__":
    main()
