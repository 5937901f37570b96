"""W1 drain: N single-step runs queued, one worker process; runs completed per second.

    python bench/w1_drain.py [--runs 20000] [--threads 8] [--prefetch 1000] [--finished 1000000]

`--finished` loads that many finished runs first, to show that history
does not slow the hot path.
"""

from __future__ import annotations

from common import DSN, describe, drain, drain_arguments, fresh_schema, load_finished, queue_backlog

from pgdurable import Context, Durable


def main() -> None:
    args = drain_arguments(runs=20_000, threads=8, prefetch=1000)
    with fresh_schema() as schema:
        app = Durable(DSN, schema=schema, pool_size=4)
        app.migrate()

        @app.function(id="one-step", event="bench/w1")
        def one_step(ctx: Context) -> int:
            return int(ctx.step.run("work", lambda: ctx.event.data["i"] + 1))

        if args.finished:
            load_finished(schema, "one-step", args.finished)
        queue_backlog(app, "bench/w1", args.runs)
        elapsed = drain(app, schema, args.threads, args.prefetch)
        app.stop()
    print(f"W1 drain: {args.runs} runs in {elapsed:.2f} s = {args.runs / elapsed:,.0f} runs/s "
          f"(threads={args.threads}, prefetch={args.prefetch}, finished runs loaded={args.finished:,}; "
          f"{describe()})")


if __name__ == "__main__":
    main()
