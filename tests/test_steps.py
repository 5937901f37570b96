from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from pgdurable import Context, Durable, NonRetriableError, RetryAfterError, StepError


def run_one(app: Durable, event: str, data: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    [event_id] = app.send(event, data or {})
    [run] = app.runs_for_event(event_id)
    if not getattr(app, "_worker", None):
        app.start(threads=2, poll_interval=0.2)
    return app.wait_for_run(run.id, timeout=timeout)


def timeline(db: psycopg.Connection[Any], schema: str, run_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        f"SELECT step_key, status, attempts FROM {schema}.step_timeline "
        "WHERE run_id = %s ORDER BY position", (run_id,)).fetchall()


def test_steps_run_once_and_are_journaled(app: Durable, db: psycopg.Connection[Any]) -> None:
    calls: Counter[str] = Counter()

    def download(key: str) -> str:
        calls["download"] += 1
        return f"bytes of {key}"

    def ocr(buf: str) -> dict[str, Any]:
        calls["ocr"] += 1
        return {"text": buf.upper(), "lines": 2}

    @app.function(id="process-receipt", event="receipt/process")
    def process(ctx: Context) -> Any:
        buf = ctx.step.run("download-file", download, ctx.event.data["file_key"])
        return ctx.step.run("ocr", ocr, buf=buf)

    run = run_one(app, "receipt/process", {"file_key": "k1"})
    assert run.status == "completed"
    assert run.output == {"text": "BYTES OF K1", "lines": 2}
    assert calls == {"download": 1, "ocr": 1}
    assert timeline(db, app.schema, run.id) == [("download-file", "completed", 1),
                                                ("ocr", "completed", 1)]


def test_replay_skips_completed_steps(app: Durable) -> None:
    calls: Counter[str] = Counter()

    @app.function(id="replayed", event="replay", retries=2)
    def replayed(ctx: Context) -> Any:
        value = ctx.step.run("first", lambda: calls.update(["first"]) or time.time())
        calls["handler"] += 1
        if calls["handler"] == 1:
            raise RuntimeError("fails outside any step, once")
        return value

    run = run_one(app, "replay")
    assert run.status == "completed"
    assert calls == {"first": 1, "handler": 2}
    assert run.attempt == 1


def test_repeated_step_ids_are_numbered(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="loop", event="loop")
    def loop(ctx: Context) -> list[int]:
        return [ctx.step.run("item", lambda i=i: i * 10) for i in range(3)]

    run = run_one(app, "loop")
    assert run.output == [0, 10, 20]
    assert [k for k, *_ in timeline(db, app.schema, run.id)] == ["item", "item:1", "item:2"]


class Parsed(BaseModel):
    summary: str
    at: datetime


def test_values_pass_the_serializer_on_first_run_and_replay(app: Durable) -> None:
    seen: list[Any] = []

    def parse() -> Parsed:
        return Parsed(summary="s", at=datetime(2026, 1, 1, tzinfo=UTC))

    @app.function(id="models", event="models", retries=1)
    def models(ctx: Context) -> str:
        seen.append(ctx.step.run("parse", parse))
        seen.append(ctx.step.run("tuple", lambda: (1, 2)))
        if len(seen) == 2:
            raise RuntimeError("force a replay")
        return "ok"

    assert run_one(app, "models").status == "completed"
    first_parse, first_tuple, replay_parse, replay_tuple = seen
    assert isinstance(first_parse, Parsed) and first_parse == replay_parse
    assert first_parse.at == datetime(2026, 1, 1, tzinfo=UTC)
    assert first_tuple == replay_tuple == [1, 2]  # JSON has no tuples, both times


def test_unserializable_step_value_fails_the_step(app: Durable) -> None:
    @app.function(id="garbage-step", event="garbage-step")
    def garbage(ctx: Context) -> str:
        try:
            ctx.step.run("bad", lambda: object())
        except StepError as exc:
            return f"caught {exc.error_type}: {exc.message}"
        return "not caught"

    run = run_one(app, "garbage-step")
    assert run.status == "completed"
    assert run.output.startswith("caught SerializationError: output of step 'bad' is not JSON-serializable")


def test_step_output_limit(make_app: Any) -> None:
    app = make_app(max_output_bytes=100)
    app.migrate()

    @app.function(id="big", event="big")
    def big(ctx: Context) -> None:
        ctx.step.run("big", lambda: "x" * 200)

    run = run_one(app, "big")
    assert run.status == "failed"
    assert run.error.type == "StepError"
    assert "over the limit of 100 bytes" in run.error.message


def test_step_retries_then_succeeds(app: Durable, db: psycopg.Connection[Any]) -> None:
    attempts: list[int] = []

    @app.function(id="flaky", event="flaky", retries=3)
    def flaky(ctx: Context) -> str:
        def call() -> str:
            attempts.append(ctx.attempt)
            if len(attempts) < 3:
                raise ConnectionError("OCR service unavailable")
            return "text"
        return str(ctx.step.run("ocr", call))

    run = run_one(app, "flaky")
    assert run.status == "completed" and run.output == "text"
    assert attempts == [0, 1, 2]
    assert run.attempt == 2
    assert timeline(db, app.schema, run.id) == [("ocr", "completed", 3)]


def test_exhausted_step_raises_step_error_in_the_function(app: Durable, db: psycopg.Connection[Any]) -> None:
    calls: Counter[str] = Counter()

    def always_fails() -> None:
        calls["step"] += 1
        raise ValueError("bad receipt")

    @app.function(id="exhausted", event="exhausted", retries=2)
    def exhausted(ctx: Context) -> None:
        ctx.step.run("ocr", always_fails)

    run = run_one(app, "exhausted")
    assert run.status == "failed"
    assert calls["step"] == 3  # first attempt and two retries
    assert run.error.type == "StepError"
    assert "ocr" in run.error.message and "ValueError: bad receipt" in run.error.message
    assert "Traceback" in (run.error.traceback or "")
    assert timeline(db, app.schema, run.id) == [("ocr", "failed", 3)]


def test_function_may_catch_step_error(app: Durable) -> None:
    @app.function(id="catches", event="catches", retries=0)
    def catches(ctx: Context) -> str:
        try:
            ctx.step.run("fails", lambda: 1 / 0)
        except StepError as exc:
            kind = exc.error_type
            return ctx.step.run("fallback", lambda: f"fallback after {kind}")
        return "unreachable"

    run = run_one(app, "catches")
    assert run.status == "completed"
    assert run.output == "fallback after ZeroDivisionError"


def test_non_retriable_error_stops_at_once(app: Durable) -> None:
    calls: Counter[str] = Counter()

    def refuse() -> None:
        calls["step"] += 1
        raise NonRetriableError("invalid file type")

    @app.function(id="nonretriable", event="nonretriable", retries=5)
    def nonretriable(ctx: Context) -> None:
        ctx.step.run("check", refuse)

    run = run_one(app, "nonretriable")
    assert run.status == "failed"
    assert calls["step"] == 1
    assert "NonRetriableError: invalid file type" in run.error.message


def test_retry_after_sets_the_next_attempt(app: Durable) -> None:
    times: list[float] = []

    def rate_limited() -> str:
        times.append(time.monotonic())
        if len(times) == 1:
            raise RetryAfterError("429 from the OCR API", 1.0)
        return "ok"

    @app.function(id="retry-after", event="retry-after", retries=1)
    def retry_after(ctx: Context) -> str:
        return str(ctx.step.run("call", rate_limited))

    run = run_one(app, "retry-after")
    assert run.status == "completed"
    assert times[1] - times[0] >= 0.95


def test_handler_errors_outside_steps_use_the_retry_budget(app: Durable) -> None:
    calls: Counter[str] = Counter()

    @app.function(id="outside", event="outside", retries=1)
    def outside(ctx: Context) -> None:
        calls["handler"] += 1
        raise KeyError("missing")

    run = run_one(app, "outside")
    assert run.status == "failed"
    assert calls["handler"] == 2
    assert run.error.type == "KeyError"


class Exotic(BaseException):
    pass


def test_worker_survives_anything_a_handler_does(app: Durable) -> None:
    @app.function(id="base-exception", event="bad", retries=0)
    def raises_base(ctx: Context) -> None:
        raise Exotic("not even an Exception")

    @app.function(id="garbage-output", event="bad", retries=0)
    def returns_garbage(ctx: Context) -> Any:
        return threading.Lock()

    @app.function(id="bad-step-id", event="bad", retries=0)
    def bad_step_id(ctx: Context) -> Any:
        return ctx.step.run(None, lambda: 1)  # type: ignore[arg-type]

    @app.function(id="healthy", event="healthy")
    def healthy(ctx: Context) -> str:
        return "fine"

    [event_id] = app.send("bad", {})
    app.start(threads=2, poll_interval=0.2)
    runs = {r.function_id: app.wait_for_run(r.id, 30) for r in app.runs_for_event(event_id)}
    assert runs["base-exception"].status == "failed"
    assert runs["base-exception"].error.type == "Exotic"
    assert runs["garbage-output"].status == "failed"
    assert runs["garbage-output"].error.type == "SerializationError"
    assert runs["bad-step-id"].error.type == "TypeError"
    assert run_one(app, "healthy").output == "fine"


def test_system_exit_from_a_handler_releases_the_run(app: Durable) -> None:
    calls: Counter[str] = Counter()

    @app.function(id="exits", event="exits", retries=0)
    def exits(ctx: Context) -> str:
        calls["handler"] += 1
        if calls["handler"] == 1:
            raise SystemExit(3)  # the worker survives; the run is attempted again
        return "second try"

    run = run_one(app, "exits")
    assert (run.status, run.output, run.attempt) == ("completed", "second try", 0)
    assert calls["handler"] == 2


def test_async_handlers_and_steps(app: Durable) -> None:
    async def fetch(key: str) -> str:
        await asyncio.sleep(0)
        return f"async {key}"

    @app.function(id="async-fn", event="async", retries=1)
    async def handler(ctx: Context) -> list[str]:
        a = await ctx.step.run("async-step", fetch, "k")
        b = await ctx.step.run("sync-step", lambda: "sync")
        return [a, b]

    run = run_one(app, "async")
    assert run.status == "completed"
    assert run.output == ["async k", "sync"]


def test_async_step_retries(app: Durable) -> None:
    calls: Counter[str] = Counter()

    async def flaky() -> int:
        calls["step"] += 1
        if calls["step"] == 1:
            raise TimeoutError("slow API")
        return 7

    @app.function(id="async-retry", event="async-retry", retries=2)
    async def handler(ctx: Context) -> int:
        return int(await ctx.step.run("call", flaky))

    run = run_one(app, "async-retry")
    assert (run.status, run.output, calls["step"]) == ("completed", 7, 2)


def test_duplicate_function_ids_are_refused(app: Durable) -> None:
    @app.function(id="dup", event="a")
    def one(ctx: Context) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        @app.function(id="dup", event="b")
        def two(ctx: Context) -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"id": "", "event": "a"}, "function id"),
        ({"id": "has space", "event": "a"}, "function id"),
        ({"id": "f"}, "needs a trigger"),
        ({"id": "f", "event": []}, "empty list"),
        ({"id": "f", "event": "a", "retries": -1}, "retries"),
        ({"id": "f", "event": "a", "retries": "3"}, "retries"),
        ({"id": "f", "event": "a", "colour": "blue"}, "unknown option colour"),
        ({"id": "f", "event": "a", "concurrency": 5}, "concurrency takes Concurrency"),
    ],
)
def test_bad_function_definitions(app: Durable, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        app.function(**options)(lambda ctx: None)


@pytest.mark.parametrize(("v2_order", "status", "error"), [
    (["b", "a", "c"], "failed", "StepOrderError"),  # journaled steps swapped: refused by name
    (["a", "new", "b", "c"], "completed", None),     # a step inserted between them: fine
])
def test_a_deploy_that_reorders_journaled_steps_fails_the_run_by_name(
    app: Durable, v2_order: list[str], status: str, error: str | None
) -> None:
    deployed = {"order": ["a", "b", "c"]}  # what the handler's code does, "v1" then "v2"

    @app.function(id="ordered", event="go", retries=2)
    def ordered(ctx: Context) -> list[str]:
        done = [ctx.step.run(name, lambda n=name: n) for name in deployed["order"][:-1]]
        if deployed["order"] == ["a", "b", "c"]:  # v1 fails at c; then the deploy happens
            deployed["order"] = v2_order
            raise RetryAfterError("deploying", 0.01)
        return [*done, ctx.step.run("c", lambda: "c")]

    [event_id] = app.send("go", {})
    [run] = app.runs_for_event(event_id)
    app.start(threads=1)
    finished = app.wait_for_run(run.id, 30)
    assert finished.status == status
    if error is None:
        assert finished.output == v2_order
    else:
        assert finished.error is not None and finished.error.type == error
        assert "'a' is reached after step 'b'" in finished.error.message
