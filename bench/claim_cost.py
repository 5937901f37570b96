"""Claim cost: one `claim_runs` round trip, on an idle queue and with one run due.

    python bench/claim_cost.py [--rounds 300]

An idle worker's poll finds nothing; under a trickle of events (W2) each
claim takes one run. Both are on the path from event to handler start.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from common import bench_app, describe, percentiles

from pgdurable.testing import internals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    lease = timedelta(seconds=30)
    idle: list[float] = []
    one: list[float] = []
    with bench_app() as (app, _):
        app.function(id="claimed", event="bench/claim")(lambda ctx: None)
        store, pool, _ = internals(app)
        with pool.connection() as conn:  # autocommit: each claim commits, as a worker's
            for i in range(args.rounds):
                start = time.perf_counter()
                store.claim_runs(conn, "bench", ["claimed"], 20, lease)
                idle.append((time.perf_counter() - start) * 1000)
                app.send("bench/claim", {"i": i})
                start = time.perf_counter()
                if len(store.claim_runs(conn, "bench", ["claimed"], 20, lease)) != 1:
                    raise AssertionError("the claim did not take the run just sent")
                one.append((time.perf_counter() - start) * 1000)
    print(f"claim_runs over {args.rounds} rounds: idle p50 {percentiles(idle)['p50']:.3f} ms, "
          f"one run due p50 {percentiles(one)['p50']:.3f} ms ({describe()})")


if __name__ == "__main__":
    main()
