"""The app that bench/scaling.py runs in each worker process (through
PgBouncer: PGDURABLE_DSN is the pooler, PGDURABLE_LISTEN_DSN the server)."""

from __future__ import annotations

import os
import time

from pgdurable import Concurrency, Context, Durable

app = Durable(os.environ["PGDURABLE_DSN"], schema=os.environ["PGDURABLE_SCHEMA"],
              listen_dsn=os.environ["PGDURABLE_LISTEN_DSN"],
              pool_size=int(os.environ.get("PGDURABLE_POOL_SIZE", "4")))
LIMIT = int(os.environ["PGDURABLE_LIMIT"])  # of `limited`, across all processes


@app.function(id="one-step", event="bench/w1")
def one_step(ctx: Context) -> int:
    return int(ctx.step.run("work", lambda: 1))


@app.function(id="five-steps", event="bench/w3")
def five_steps(ctx: Context) -> int:
    return sum(ctx.step.run(f"step-{n}", lambda n=n: n) for n in range(5))


def _record(run_id: str) -> None:
    """Hold a slot for 50 ms and say when, on the database's clock."""
    with app.connection() as conn:
        began = conn.execute("SELECT clock_timestamp()").fetchone()
        time.sleep(0.05)
        conn.execute(f'INSERT INTO "{app.schema}".spans VALUES (%s, %s, clock_timestamp())',
                     (run_id, began[0] if began else None))


@app.function(id="limited", event="bench/limited", concurrency=Concurrency(limit=LIMIT))
def limited(ctx: Context) -> None:
    ctx.step.run("hold", _record, ctx.run_id)
