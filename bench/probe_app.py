"""The app that bench/probe_cancel.py runs in worker processes.

Each step records in `effects` when its code began (`began`, this host's
clock, which is the database's: the probes run beside their Postgres) and
when its write reached the database (`at`, the database's clock).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import UTC, datetime

from psycopg import sql

from pgdurable import AsyncContext, Context, Durable, RetryAfterError

app = Durable(os.environ["PGDURABLE_DSN"], schema=os.environ["PGDURABLE_SCHEMA"], lease="2s")


def effect(run_id: str, step: str) -> None:
    began = datetime.now(UTC)  # Postgres runs on this host: the same clock
    with app.connection() as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, clock_timestamp(), %s)").format(
            sql.Identifier(app.schema, "effects")), (run_id, step, began))


def gap() -> None:
    """Plain handler code between steps: none, a little, or a while."""
    time.sleep(random.choice((0, 0, 0.002, 0.02, 0.2)))


@app.function(id="probe", event="probe", retries=5)
def probe(ctx: Context) -> str:
    gap()
    ctx.step.run("a", effect, ctx.run_id, "a")
    gap()
    ctx.step.run("b", effect, ctx.run_id, "b")
    gap()
    ending = int(ctx.event.data["n"]) % 5
    if ending == 0:
        ctx.step.wait_for_event("never", event="never")
    elif ending == 1:
        ctx.step.sleep("nap", "1h")
    elif ending == 2:
        ctx.step.invoke("call", function="child")
    elif ending == 3 and ctx.attempt == 0:
        ctx.step.run("later", lambda: (_ for _ in ()).throw(RetryAfterError("later", "1h")))
    ctx.step.run("c", effect, ctx.run_id, "c")
    return "done"


@app.function(id="probe-async", event="probe-async", retries=5)
async def probe_async(ctx: AsyncContext) -> str:
    """`probe` as an `async def` handler: many runs at once on the worker's
    event loop, the code between steps awaiting instead of blocking."""
    await asyncio.sleep(random.choice((0, 0, 0.002, 0.02, 0.2)))
    await ctx.step.run("a", effect, ctx.run_id, "a")
    await asyncio.sleep(random.choice((0, 0, 0.002, 0.02, 0.2)))
    await ctx.step.run("b", effect, ctx.run_id, "b")
    ending = int(ctx.event.data["n"]) % 5
    if ending == 0:
        await ctx.step.wait_for_event("never", event="never")
    elif ending == 1:
        await ctx.step.sleep("nap", "1h")
    elif ending == 2:
        await ctx.step.invoke("call", function="child")
    elif ending == 3 and ctx.attempt == 0:
        await ctx.step.run("later", lambda: (_ for _ in ()).throw(RetryAfterError("later", "1h")))
    await ctx.step.run("c", effect, ctx.run_id, "c")
    return "done"


@app.function(id="child", event="child")
def child(ctx: Context) -> None:
    effect(ctx.run_id, "child")


@app.function(id="awaits", event="awaits")
def awaits(ctx: Context) -> str | None:
    def a() -> None:
        effect(ctx.run_id, "a")
        time.sleep(random.uniform(0, 0.3))

    ctx.step.run("a", a)
    got = ctx.step.wait_for_event("w", event="go", match="data.n", timeout="5s")
    return None if got is None else got.id
