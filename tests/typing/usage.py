"""What a user's type checker sees: checked by `mypy --strict` (the `files`
of pyproject's [tool.mypy]), never run.

`assert_type` lines pin the types the API promises. Each `# type: ignore[...]`
marks a line that must NOT type-check: with `warn_unused_ignores` (part of
--strict), mypy fails if such a line ever starts to pass.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal, assert_type

import psycopg
from pydantic import BaseModel

from pgdurable import (
    AsyncContext,
    Batch,
    Cancel,
    Concurrency,
    Context,
    Debounce,
    Durable,
    Event,
    Priority,
    RateLimit,
    Run,
    RunStatus,
    Singleton,
    StepInfo,
    Throttle,
    Timeouts,
)

app = Durable("postgresql://localhost/app")


class Receipt(BaseModel):
    total: float


def ocr(url: str, *, lang: str = "en") -> Receipt:
    return Receipt(total=1.0)


async def ocr_async(url: str) -> Receipt:
    return Receipt(total=1.0)


def store_receipt(conn: psycopg.Connection[Any], receipt_id: int) -> bool:
    return True


@app.function(id="child", event="child/go")
def child(ctx: Context) -> dict[str, int]:
    return {"n": 1}


@app.function(id="child-async", event="child/go-async")
async def child_async(ctx: AsyncContext) -> list[str]:
    return ["a"]


# -- a `def` handler: every step kind -------------------------------------

@app.function(
    id="sync", event="receipt/uploaded", retries=5,
    cancel_on=[Cancel(event="receipt/deleted", match="data.id")],
    timeouts=Timeouts(start="1m", finish="1h"),
    concurrency=Concurrency(limit=2, key="event.data.user"),
    throttle=Throttle(limit=10, period="1m"),
    rate_limit=RateLimit(limit=5, period="1h", key="event.data.user"),
    singleton=Singleton(key="event.data.user", mode="cancel"),
    idempotency="event.data.id",
    priority=Priority(run="event.data.priority"),
    on_failure=lambda ctx: None,
)
def sync_handler(ctx: Context) -> float:
    assert_type(ctx.event, Event)
    assert_type(ctx.attempt, int)
    receipt = ctx.step.run("ocr", ocr, "https://x", lang="fr")
    assert_type(receipt, Receipt)
    assert_type(ctx.step.run("n", lambda: 3), int)
    assert_type(ctx.step.transaction("save", store_receipt, 7), bool)
    assert_type(ctx.step.wait_for_event("approval", event="receipt/approved", timeout="1d"),
                Event | None)
    assert_type(ctx.step.invoke("child", function=child), dict[str, int])
    assert_type(ctx.step.invoke("child-async", function=child_async), list[str])
    assert_type(ctx.step.invoke("by-id", function="child"), Any)
    assert_type(ctx.step.parallel((lambda: 1, lambda: "a")), tuple[int, str])
    assert_type(ctx.step.parallel([lambda: 1, lambda: 2, lambda: 3]), tuple[int, ...])
    assert_type(ctx.step.send_event("notify", Event("receipt/done", {"id": 1})), list[str])
    ctx.step.sleep("pause", "5m")
    ctx.step.sleep("pause-td", timedelta(seconds=3))
    ctx.step.sleep_until("later", datetime(2030, 1, 1, tzinfo=UTC))
    with ctx.rls_bypass("jobs:receipts") as conn:
        assert_type(conn, psycopg.Connection[Any])
    ctx.step.run("ocr-bad", ocr, 42)  # type: ignore[arg-type]
    ctx.step.run("ocr-missing", ocr)  # type: ignore[call-arg]
    ctx.step.run("ocr-kw", ocr, "u", language="fr")  # type: ignore[call-arg]
    ctx.step.transaction("save-bad", store_receipt, "seven")  # type: ignore[arg-type]
    ctx.step.sleep("pause-bad", [1])  # type: ignore[arg-type]
    return receipt.total


# -- an `async def` handler: the same steps, awaited ------------------------

@app.function(
    id="async", event=["a", "b"],
    debounce=Debounce(period="5s", key="event.data.user", timeout="1m"),
)
async def async_handler(ctx: AsyncContext) -> str:
    assert_type(await ctx.step.run("ocr", ocr_async, "https://x"), Receipt)
    assert_type(await ctx.step.run("sync-fn", ocr, "https://x"), Receipt)
    assert_type(await ctx.step.transaction("save", store_receipt, 7), bool)
    assert_type(await ctx.step.wait_for_event("w", event=["x", "y"], if_="event.data.ok == true"),
                Event | None)
    assert_type(await ctx.step.invoke("child", function=child_async), list[str])

    async def one() -> int:
        return 1

    async def two() -> str:
        return "2"

    assert_type(await ctx.step.parallel((one, two)), tuple[int, str])
    await ctx.step.sleep("pause", 1.5)
    await ctx.step.sleep_until("later", datetime(2030, 1, 1, tzinfo=UTC))
    assert_type(await ctx.step.send_event("done", [Event("a/done", {})]), list[str])
    await ctx.step.run("ocr-bad", ocr_async, 1)  # type: ignore[call-overload]
    forgot_await: Receipt = ctx.step.run("not-awaited", ocr, "u")  # type: ignore[assignment]
    del forgot_await
    return "ok"


@app.function(id="batched", event="log", batch=Batch(max_size=100, timeout="5s"))
def batched(ctx: Context) -> int:
    return len(ctx.events)


@app.function(id="cron", cron="0 9 * * MON", timezone="Europe/Paris", catch_up="latest")
def weekly(ctx: Context) -> None:
    return None


# -- options and handlers that must not type-check --------------------------

@app.function(id="typo", event="e", concurrancy=Concurrency(limit=1))  # type: ignore[call-arg]
def typo(ctx: Context) -> None:
    return None


@app.function(id="bad-catch-up", cron="* * * * *", catch_up="sometimes")  # type: ignore[arg-type]
def bad_catch_up(ctx: Context) -> None:
    return None


@app.function(id="not-a-handler", event="e")  # type: ignore[type-var]
def not_a_handler(user_id: int) -> None:
    return None


async def wrong_context(ctx: AsyncContext) -> None:
    ctx.step.sleep("s", 1)  # type: ignore[unused-coroutine]


# -- the management API -----------------------------------------------------

def manage() -> None:
    ids = app.send("receipt/uploaded", {"id": 1})
    assert_type(ids, list[str])
    run = app.wait_for_run(ids[0], timeout=10)
    assert_type(run, Run)
    assert_type(run.status, RunStatus)
    assert_type(app.get_run(ids[0]), Run | None)
    page = app.list_runs(event="receipt/uploaded", since=run.created_at, limit=10)
    assert_type(app.list_runs(after=page[-1].id), list[Run])
    assert_type(app.list_events(name="receipt/uploaded"), list[Event])
    app.list_runs(since="yesterday")  # type: ignore[arg-type]
    assert_type(app.fork(run.id, from_step="ocr", data={"file_key": "k2"}, actor="ops"), str)
    assert_type(run.forked_from, str | None)
    assert_type(app.get_steps(run.id), list[StepInfo])
    assert_type(app.list_functions()[0].next_tick, datetime | None)
    assert_type(app.list_workers()[0].live, bool)
    assert_type([c.verdict for c in app.doctor()], list[Literal["ok", "warning", "problem"]])
    app.fork(run.id, from_step=3)  # type: ignore[arg-type]
    if run.status == "completed":
        assert_type(run.output, Any)
    app.send("e", 1)  # type: ignore[arg-type]
