"""The app that bench/soak.py runs in a `pgdurable worker` process."""

from __future__ import annotations

import asyncio
import os

from pgdurable import AsyncContext, Context, Durable

app = Durable(os.environ["PGDURABLE_DSN"], schema=os.environ["PGDURABLE_SCHEMA"])


@app.function(id="w1", event="soak/w1")
def w1(ctx: Context) -> int:
    """W1's run: one step."""
    return ctx.step.run("work", lambda: int(ctx.event.data["i"]))


@app.function(id="nap", event="soak/nap")
def nap(ctx: Context) -> None:
    """Sleeps in the database: held by no worker meanwhile."""
    ctx.step.sleep("nap", "1h")


@app.function(id="hold", event="soak/hold")
async def hold(ctx: AsyncContext) -> None:
    """Running: a task of the worker's loop, awaiting inside a step."""
    async def wait() -> None:
        await asyncio.sleep(float(ctx.event.data["seconds"]))

    await ctx.step.run("hold", wait)
