"""Bulk sends: N events in calls of 1,000, each starting a run (as W1 queues them).

    python bench/bulk_send.py [--events 20000] [--rounds 3]

Events and runs are stored as any send stores them (one round trip per
call, idempotency kept); no worker runs. Compare with PgQueuer's bulk
enqueue (`bench/peers/pgqueuer_bench.py`) on the same Postgres.
"""

from __future__ import annotations

import argparse
import time

from common import bench_app, describe, send_in_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates = []
    for _ in range(args.rounds):
        with bench_app() as (app, _schema):
            app.function(id="one-step", event="bench/w1")(lambda ctx: None)
            began = time.perf_counter()
            send_in_batches(app, "bench/w1", ({"i": i, "k": i % 100} for i in range(args.events)))
            rates.append(args.events / (time.perf_counter() - began))
    print(f"bulk send: {args.events} events (and runs) in calls of 1,000, "
          f"{', '.join(f'{r:,.0f}' for r in rates)} events/s ({describe()})")


if __name__ == "__main__":
    main()
