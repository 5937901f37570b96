"""Every run option, for every way a run starts (issue 14, s3).

A run of function "f" starts from a sent event, a cron tick, an `invoke`, a
`replay`, a debounce that fires, or a batch. Flow control (concurrency,
throttle), `cancel_on` and `timeouts` hold for all of them. Admission
options (idempotency, rate_limit, singleton) decide whether an *event*
starts a run, so they hold for sends, cron ticks and debounces; `invoke`
and `replay` start a run on purpose and are not subject to them (documented
in docs/concepts/options.md). A batch refuses admission options and
cancel_on at definition. An on_failure handler takes no options of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import wait_until
from test_flow import max_overlap

from pgdurable import (
    Batch,
    Cancel,
    Concurrency,
    ConfigurationError,
    Context,
    Debounce,
    Durable,
    NonRetriableError,
    RateLimit,
    Run,
    Singleton,
    Throttle,
    Timeouts,
)

TRIGGERS = ("event", "cron", "invoke", "replay", "debounce", "batch")

Handler = Callable[[Context], Any]


def constant(event: object) -> str:
    """One key for every run of f, however it starts."""
    return "one"


class Starts:
    """Registers "f" behind one trigger and starts its runs that way."""

    def __init__(self, app: Durable, trigger: str, handler: Handler, **options: Any) -> None:
        self.app, self.trigger, self.sent = app, trigger, 0
        self.first: str | None = None
        register = {
            "event": dict(event="go"), "replay": dict(event="go"), "invoke": dict(event="never"),
            "cron": dict(cron="* * * * * *"),
            "debounce": dict(event="go", debounce=Debounce(period="50ms", key="data.n")),
            "batch": dict(event="go", batch=Batch(max_size=1, timeout="1s")),
        }[trigger]
        app.function(id="f", **register, **options)(handler)
        if trigger == "invoke":
            app.function(id="parent", event="go")(
                lambda ctx: ctx.step.invoke("child", function="f", data=ctx.event.data))

    def start(self) -> None:
        """One more run of f (a cron tick needs no help: one comes each second)."""
        self.sent += 1
        if self.trigger == "cron":
            return
        if self.trigger == "replay" and self.first is not None:
            self.app.replay(self.first)
            return
        self.app.send("go", {"n": self.sent})
        if self.trigger == "replay":
            self.first = wait_until(lambda: self.app.list_runs(function="f"), what="a run")[0].id

    def runs(self) -> list[Run]:
        return self.app.list_runs(function="f", limit=100)

    def one(self) -> Run:
        """A run started this way: for a replay, the replayed one (not its original)."""
        self.start()
        if self.trigger == "replay":
            self.start()
        runs = wait_until(lambda: [r for r in self.runs() if r.id != self.first], what="a run")
        return min(runs, key=lambda r: r.created_at)


@pytest.fixture
def spans(app: Durable, db: psycopg.Connection[Any]) -> Durable:
    db.execute(f"CREATE TABLE {app.schema}.spans "
               "(run_id uuid, key text, started timestamptz, ended timestamptz)")
    return app


def napping(ctx: Context) -> None:
    ctx.step.sleep("nap", "1h")


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_concurrency_holds(spans: Durable, db: psycopg.Connection[Any], trigger: str) -> None:
    app = spans

    def busy(ctx: Context) -> None:  # each run works 1.2 s: longer than a cron tick's second
        ctx.step.run("work", work, app, ctx.run_id, 1.2)

    starts = Starts(app, trigger, busy, concurrency=Concurrency(limit=1))
    app.start(threads=4)
    for _ in range(3):
        starts.start()
    wait_until(lambda: sum(r.status == "completed" for r in starts.runs()) >= 3, timeout=60,
               what="three runs of f")
    assert max_overlap(db, app.schema) == 1


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_throttle_holds(app: Durable, db: psycopg.Connection[Any], trigger: str) -> None:
    starts = Starts(app, trigger, lambda ctx: None, throttle=Throttle(limit=1, period="1h"))
    app.start(threads=2)
    starts.start()
    starts.start()

    def one_done_one_an_hour_away() -> bool:
        statuses = sorted(r.status for r in starts.runs())
        pushed = db.execute(f"SELECT count(*) FROM {app.schema}.queue q JOIN {app.schema}.runs r "
                            "ON r.id = q.run_id WHERE r.function_id = 'f' AND q.status = 'queued' "
                            "AND q.available_at > now() + interval '50 minutes'").fetchone()
        return statuses[:2] == ["completed", "queued"] and pushed == (len(statuses) - 1,)

    wait_until(one_done_one_an_hour_away, what="the second run throttled an hour away")


@pytest.mark.parametrize("trigger", [t for t in TRIGGERS if t != "batch"])
def test_cancel_on_holds(app: Durable, trigger: str) -> None:
    starts = Starts(app, trigger, napping, cancel_on=[Cancel(event="stop")])
    app.start(threads=2)
    run = starts.one()
    wait_until(lambda: app.get_run(run.id).status == "sleeping", what="the run asleep")
    app.send("stop", {})
    assert app.wait_for_run(run.id, 20).status == "cancelled"


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_finish_timeout_holds(app: Durable, trigger: str) -> None:
    starts = Starts(app, trigger, napping, timeouts=Timeouts(finish="1s"))
    app.start(threads=2)
    ended = app.wait_for_run(starts.one().id, 20)
    assert ended.status == "cancelled" and ended.error is not None
    assert "finish" in ended.error.message


ADMISSION = {
    "idempotency": dict(idempotency=constant),
    "rate_limit": dict(rate_limit=RateLimit(limit=1, period="1h", key=constant)),
    "singleton": dict(singleton=Singleton(key=constant)),
}


@pytest.mark.parametrize("trigger", [t for t in TRIGGERS if t != "batch"])
@pytest.mark.parametrize("option", sorted(ADMISSION))
def test_admission_decides_for_events_not_for_invoke_and_replay(
    app: Durable, trigger: str, option: str
) -> None:
    starts = Starts(app, trigger, napping, **ADMISSION[option])
    app.start(threads=2)
    starts.start()
    wait_until(lambda: starts.runs(), what="the first run")  # in progress when the second comes
    starts.start()
    wait_until(lambda: _decided(app, starts), what="the second start to be decided")
    admitted = [r for r in starts.runs() if r.status != "skipped"]
    assert len(admitted) == (2 if trigger in ("invoke", "replay") else 1), starts.runs()


@pytest.mark.parametrize("option", [{"idempotency": constant}, {"cancel_on": [Cancel("x")]},
                                    {"rate_limit": RateLimit(1, "1h")}, {"singleton": Singleton()}])
def test_a_batch_refuses_what_it_cannot_hold(app: Durable, option: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="batch= cannot go with"):
        app.function(id="f", event="go", batch=Batch(max_size=2, timeout="1s"), **option)(napping)


def _decided(app: Durable, starts: Starts) -> bool:
    """Whether the second start has been admitted or refused."""
    if starts.trigger == "cron":  # a tick's event and its run (or none) commit together
        return _count(app, "events WHERE id LIKE 'pgdurable:cron/f/%%'") >= 2
    if starts.trigger == "debounce":  # both sends' debounces have fired
        return _count(app, "debounces") == 0 and _count(app, "events WHERE name = 'go'") == 2
    if starts.trigger == "invoke":  # by design both children start
        return len(starts.runs()) == 2
    return True  # a send and a replay decide before they return


def _count(app: Durable, where: str) -> int:
    with app.connection() as conn:
        row = conn.execute(f"SELECT count(*) FROM {app.schema}.{where}").fetchone()
    assert row is not None
    return int(row[0])


def work(app: Durable, run_id: str, seconds: float) -> None:
    """A step that works `seconds` (simulated), its span recorded in `spans`."""
    with app.connection() as conn:
        conn.execute(f"INSERT INTO {app.schema}.spans VALUES (%s, 'f', clock_timestamp(), null)",
                     (run_id,))
    time.sleep(seconds)
    with app.connection() as conn:
        conn.execute(f"UPDATE {app.schema}.spans SET ended = clock_timestamp() WHERE run_id = %s",
                     (run_id,))


def test_an_on_failure_handler_runs_with_its_function_s_retries(app: Durable) -> None:
    def flaky_handler(ctx: Context) -> str:
        if ctx.attempt == 0:
            raise RuntimeError("the first try of the handler fails")
        return "reported"

    def failing(ctx: Context) -> None:
        raise NonRetriableError("fails for good")

    app.function(id="f", event="go", retries=1, on_failure=flaky_handler)(failing)
    app.start(threads=2)
    app.send("go", {})
    [handler] = wait_until(lambda: app.list_runs(function="f/on-failure"), what="the handler's run")
    done = app.wait_for_run(handler.id, 20)
    assert (done.status, done.output, done.attempt) == ("completed", "reported", 1)
