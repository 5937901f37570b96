"""The app run by worker subprocesses in tests (see conftest.WorkerProcess).

Side effects go to the `effects` table of the test's schema, so tests can
count how often each step really executed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from psycopg import sql

from pgdurable import (
    Batch,
    Concurrency,
    Context,
    Debounce,
    Durable,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)

if os.environ.get("PGDURABLE_TEST_TRACE_FILE"):  # only in the test of traces through a crash
    from collections.abc import Sequence

    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class SpansToFile(SpanExporter):
        """Each span as a JSON line, written as it ends (a SIGKILL loses none ended)."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(os.environ["PGDURABLE_TEST_TRACE_FILE"], "a") as out:
                out.writelines(span.to_json(indent=None) + "\n" for span in spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SpansToFile()))
    trace.set_tracer_provider(provider)

app = Durable(os.environ["PGDURABLE_DSN"], schema=os.environ["PGDURABLE_SCHEMA"],
              listen_dsn=os.environ.get("PGDURABLE_LISTEN_DSN"),
              lease="2s", retry_backoff=("20ms", "200ms"),
              connect_timeout=float(os.environ.get("PGDURABLE_CONNECT_TIMEOUT", "10")))


def effect(run_id: str, what: str) -> None:
    with app.connection() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {}.effects (run_id, what) VALUES (%s, %s)").format(
                sql.Identifier(app.schema)),
            (run_id, what),
        )


def flag_is_set(name: str) -> bool:
    with app.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.flags WHERE name = %s").format(
                sql.Identifier(app.schema)), (name,)).fetchone()
        return bool(row and row[0])


@app.function(id="two-steps", event="test/two-steps")
def two_steps(ctx: Context) -> str:
    ctx.step.run("one", effect, ctx.run_id, "one")

    def second() -> str:
        effect(ctx.run_id, "two-start")
        while not flag_is_set("release"):  # blocks until the test releases it
            time.sleep(0.05)
        effect(ctx.run_id, "two-end")
        return "done"

    return str(ctx.step.run("two", second))


def report_failure(ctx: Context) -> None:
    assert ctx.error is not None
    ctx.step.run("report", effect, ctx.error.run_id, "on-failure")


@app.function(id="cancel-then-die", event="test/cancel-then-die", retries=0,
              on_failure=report_failure)
def cancel_then_die(ctx: Context) -> str:
    ctx.step.run("one", effect, ctx.run_id, "one")

    def second() -> str:
        effect(ctx.run_id, "two-start")
        while True:  # until its worker is killed
            time.sleep(0.05)

    return str(ctx.step.run("two", second))


@app.function(id="count-once", event="test/count-once")
def count_once(ctx: Context) -> int:
    ctx.step.run("effect", effect, ctx.run_id, "ran")
    return int(ctx.event.data["n"])


@app.function(id="sleep-then-wait", event="test/sleep-then-wait")
def sleep_then_wait(ctx: Context) -> int:
    ctx.step.run("before", effect, ctx.run_id, "before")
    ctx.step.sleep("nap", "2s")
    event = ctx.step.wait_for_event("go", event="test/go", match="data.n", timeout="1h")
    ctx.step.run("after", effect, ctx.run_id, "after")
    return -1 if event is None else int(event.data["n"])


@app.function(id="parallel-kill", event="test/parallel-kill")
def parallel_kill(ctx: Context) -> list[str]:
    def blocked() -> str:
        effect(ctx.run_id, "blocked-start")
        while not flag_is_set("release"):
            time.sleep(0.05)
        return "blocked"

    return list(ctx.step.parallel((
        lambda: ctx.step.run("quick", lambda: effect(ctx.run_id, "quick") or "quick"),
        lambda: ctx.step.run("blocked", blocked),
    )))


@app.function(id="exactly-once", event="test/exactly-once")
def exactly_once(ctx: Context) -> int:
    ctx.step.run("before", effect, ctx.run_id, "before")

    def book(conn: psycopg.Connection[Any]) -> int:
        conn.execute(sql.SQL("INSERT INTO {} (run_id, what) VALUES (%s, 'booked')").format(
            sql.Identifier(app.schema, "effects")), (ctx.run_id,))
        conn.execute("SELECT pg_sleep(0.005)")  # a window for kills mid-transaction
        return int(ctx.event.data["n"])

    n: int = ctx.step.transaction("book", book)
    ctx.step.run("after", effect, ctx.run_id, "after")
    return n


if os.environ.get("PGDURABLE_TEST_CRON"):  # only in the test of schedules

    @app.function(id="every-second", cron="* * * * * *")
    def every_second(ctx: Context) -> str:
        return str(ctx.event.data["tick"])


if os.environ.get("PGDURABLE_TEST_BATCH"):  # only in the test of batches

    @app.function(id="batched", event="test/batched", batch=Batch(10, "1s", key="data.k"))
    def batched(ctx: Context) -> int:
        for event in ctx.events:
            ctx.step.run(f"handle-{event.id}", effect, ctx.run_id, str(event.id))
        return len(ctx.events)


if os.environ.get("PGDURABLE_TEST_FLOW"):  # only in the tests of flow control

    def span(run_id: str, key: str, seconds: float) -> None:
        """Record when this step executed, in the test's `spans` table."""
        table = sql.Identifier(app.schema, "spans")
        with app.connection() as conn:
            conn.execute(sql.SQL("INSERT INTO {} (run_id, key, started) "
                                 "VALUES (%s, %s, clock_timestamp())").format(table), (run_id, key))
        time.sleep(seconds)
        with app.connection() as conn:
            conn.execute(sql.SQL("UPDATE {} SET ended = clock_timestamp() "
                                 "WHERE run_id = %s AND ended IS NULL").format(table), (run_id,))

    @app.function(id="limited", event="test/limited",
                  concurrency=[Concurrency(limit=3), Concurrency(limit=1, key="data.user")])
    def limited(ctx: Context) -> None:
        ctx.step.run("work", span, ctx.run_id, str(ctx.event.data["user"]), 0.02)

    @app.function(id="ordered", event="test/ordered", concurrency=Concurrency(limit=1),
                  priority=Priority(run="data.priority"))
    def ordered(ctx: Context) -> None:
        ctx.step.run("work", span, ctx.run_id, "", 0.01)

    @app.function(id="throttled", event="test/throttled",
                  throttle=Throttle(limit=5, period="1s", burst=2))
    def throttled(ctx: Context) -> None:
        ctx.step.run("work", span, ctx.run_id, "", 0)

    @app.function(id="hog", event="test/hog", concurrency=Concurrency(limit=1))
    def hog(ctx: Context) -> None:
        def work() -> None:
            effect(ctx.run_id, "hog-start")
            first_time = ctx.event.data["n"] == 0 and not flag_is_set(ctx.run_id)
            if first_time:
                with app.connection() as conn:
                    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(
                        sql.Identifier(app.schema, "flags")), (ctx.run_id,))
            while first_time:
                time.sleep(0.05)  # holds its slot until its worker is killed

        ctx.step.run("work", span, ctx.run_id, "", 0)
        ctx.step.run("hold", work)

    @app.function(id="solo", event="test/solo", singleton=Singleton(key="data.k"),
                  rate_limit=RateLimit(limit=4, period="1h", key="data.k"))
    def solo(ctx: Context) -> None:
        ctx.step.run("work", span, ctx.run_id, str(ctx.event.data["k"]), 0.05)

    @app.function(id="once", event="test/once", idempotency="data.order")
    def once(ctx: Context) -> int:
        ctx.step.run("work", span, ctx.run_id, str(ctx.event.data["order"]), 0)
        return int(ctx.event.data["order"])

    @app.function(id="settled", event="test/settled", debounce=Debounce("2s", key="data.k"))
    def settled(ctx: Context) -> int:
        ctx.step.run("work", span, ctx.run_id, str(ctx.event.data["k"]), 0)
        return int(ctx.event.data["n"])
