"""The async API: each `_async` twin answers as its sync call does, raises
the same errors before anything is written, sends in the caller's
AsyncConnection (or SQLAlchemy AsyncSession) transaction, and never
blocks the event loop."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pgdurable import (
    ConfigurationError,
    Context,
    Durable,
    Event,
    InvalidEventError,
    NotFoundError,
)

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def _story(app: Durable) -> dict[str, str]:
    """Runs in each state the management calls report: `done` completed,
    `broken` failed at step 'total', `asleep` waiting an hour for approval."""

    @app.function(id="receipt", event="receipt/uploaded", retries=0)
    def receipt(ctx: Context) -> Any:
        text = ctx.step.run("ocr", lambda: f"text of {ctx.event.data['key']}")
        if ctx.event.data.get("nap"):
            ctx.step.wait_for_event("approval", event="receipt/approved", timeout="1h")

        def total() -> float:
            if ctx.event.data.get("broken"):
                raise ValueError("no total in the text")
            return 12.5

        return {"text": text, "total": ctx.step.run("total", total)}

    app.start(threads=2, poll_interval=0.1)
    runs = {}
    for name, data in (("done", {"key": "a"}), ("broken", {"key": "b", "broken": True}),
                       ("asleep", {"key": "c", "nap": True})):
        [event_id] = app.send("receipt/uploaded", data, id=f"ev-{name}")
        runs[name] = app.runs_for_event(event_id)[0].id
    for name in ("done", "broken"):
        app.wait_for_run(runs[name], 20)
    deadline = time.monotonic() + 20
    while app.get_run(runs["asleep"]).status != "waiting":  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the run did not fall asleep"
        time.sleep(0.02)
    return runs


def test_every_read_twin_answers_as_its_sync_call(app: Durable) -> None:
    runs = _story(app)
    since = datetime.now(UTC) - timedelta(hours=1)
    reads: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("get_run", (runs["done"],), {}),
        ("get_run", ("01000000-0000-7000-8000-000000000000",), {}),
        ("wait_for_run", (runs["broken"],), {"timeout": 5}),
        ("runs_for_event", ("ev-asleep",), {}),
        ("list_runs", (), {"function": "receipt", "limit": 2}),
        ("list_runs", (), {"status": "failed"}),
        ("get_event", ("ev-done",), {}),
        ("list_events", (), {"name": "receipt/uploaded", "since": since}),
        ("get_steps", (runs["broken"],), {}),
        ("get_waits", (runs["asleep"],), {}),
        ("count_runs", (since,), {}),
        ("queue_summary", (), {}),
        ("list_functions", (), {}),
    ]
    for name, args, kwargs in reads:
        synced = getattr(app, name)(*args, **kwargs)
        awaited = run(getattr(app, f"{name}_async")(*args, **kwargs))
        assert awaited == synced, name
        assert synced not in (None, []) or name == "get_run", f"{name} found nothing to compare"
    workers = run(app.list_workers_async())
    assert [w.id for w in workers] == [w.id for w in app.list_workers()]


def test_the_action_twins_act_as_the_sync_calls(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    runs = _story(app)
    replayed = run(app.replay_async(runs["broken"], actor="ops"))
    forked = run(app.fork_async(runs["broken"], "total", {"key": "b"}, actor="ops"))
    assert run(app.wait_for_run_async(forked, 20)).output == {"text": "text of b", "total": 12.5}
    assert app.get_run(forked).forked_from == runs["broken"]  # type: ignore[union-attr]
    assert app.wait_for_run(replayed, 20).status == "failed"  # the same broken event
    assert run(app.cancel_async(runs["asleep"], actor="ops")) is True
    assert app.get_run(runs["asleep"]).status == "cancelled"  # type: ignore[union-attr]
    assert run(app.cancel_async(runs["asleep"])) is False  # finished already: as cancel says
    [later] = run(app.send_async("receipt/uploaded", {"key": "d", "nap": True}))
    [sleeper] = app.runs_for_event(later)
    assert run(app.cancel_runs_async(run_ids=[sleeper.id])) == 1
    actions = db.execute(f'SELECT action, who FROM "{app.schema}".operator_audit ORDER BY at')
    user = db.execute("SELECT current_user").fetchone()
    assert actions.fetchall() == [("replay", "ops"), ("fork", "ops"), ("cancel", "ops"),
                                  ("cancel", user[0] if user else None)]


def test_send_async_in_the_callers_transaction(
    app: Durable, dsn: str, db: psycopg.Connection[Any]
) -> None:
    """With conn= an AsyncConnection, the events exist if and only if the
    caller's transaction commits."""
    app.function(id="noted", event="note")(lambda ctx: None)

    async def both() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with conn.transaction():
                await app.send_async("note", {"n": 1}, id="kept", conn=conn)
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await app.send_async("note", {"n": 2}, id="dropped", conn=conn)
                    raise RuntimeError("the caller's own error: roll back")

    run(both())
    ids = [row[0] for row in db.execute(f'SELECT id FROM "{app.schema}".events')]
    assert ids == ["kept"]
    assert [r.function_id for r in app.runs_for_event("kept")] == ["noted"]


def test_send_async_in_an_sqlalchemy_async_session(
    app: Durable, dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Through the session's driver connection: the event commits with the
    session's own row, or neither does."""
    pytest.importorskip("sqlalchemy")
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    db.execute(f'CREATE TABLE "{app.schema}".orders (id int PRIMARY KEY)')
    app.function(id="ship", event="order/placed")(lambda ctx: None)
    url = "postgresql+psycopg://" + dsn.removeprefix("postgresql://")

    async def place(order: int, fail: bool) -> None:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text(f'INSERT INTO "{app.schema}".orders VALUES ({order})'))
                raw = await (await session.connection()).get_raw_connection()
                await app.send_async("order/placed", {"order": order}, id=f"o-{order}",
                                     conn=raw.driver_connection)
                if fail:
                    raise RuntimeError("payment declined")
        finally:
            await engine.dispose()

    run(place(1, fail=False))
    with pytest.raises(RuntimeError):
        run(place(2, fail=True))
    orders = [row[0] for row in db.execute(f'SELECT id FROM "{app.schema}".orders')]
    events = [row[0] for row in db.execute(f'SELECT id FROM "{app.schema}".events')]
    assert (orders, events) == ([1], ["o-1"])


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("send", ("", {}), {}, InvalidEventError, "event name must not be empty"),
    ("send", ("note", {"blob": "x" * 2048}), {}, InvalidEventError, "over the limit"),
    ("send", ("note", {"when": object()}), {}, InvalidEventError, "serializ"),
    ("send", ([Event("note", {}), "note"],), {}, InvalidEventError, "expected Event objects"),
    ("send", ("note", {}), {"ts": datetime(2030, 1, 1)}, InvalidEventError, "naive datetime"),
    ("get_run", ("not-a-uuid",), {}, ConfigurationError, "is not a run id"),
    ("list_runs", (), {"status": "lost"}, ConfigurationError, "status 'lost'"),
    ("list_runs", (), {"limit": 0}, ConfigurationError, "limit must be a positive int"),
    ("list_events", (), {"since": datetime(2020, 1, 1)}, ConfigurationError, "timezone"),
    ("count_runs", (datetime(2020, 1, 1),), {}, ConfigurationError, "timezone"),
    ("cancel_runs", (), {}, ConfigurationError, "give a function or run_ids"),
    ("cancel_runs", ("nobody",), {}, ConfigurationError, "no function 'nobody'"),
    ("replay", ("01000000-0000-7000-8000-000000000000",), {}, NotFoundError, "no run"),
    ("fork", ("01000000-0000-7000-8000-000000000000", 3), {}, ConfigurationError, "step key"),
    ("wait_for_run", ("01000000-0000-7000-8000-000000000000",), {}, NotFoundError, "no run"),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "error", "says"), BAD_CALLS,
                         ids=[f"{c[0]}-{c[4]}" for c in BAD_CALLS])
def test_bad_input_raises_the_same_error_and_writes_nothing(
    make_app: Callable[..., Durable], db: psycopg.Connection[Any], name: str,
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], says: str,
) -> None:
    app = make_app(max_event_bytes=1024)
    app.migrate()
    app.function(id="noted", event="note")(lambda ctx: None)
    with pytest.raises(error, match=says) as synced:
        getattr(app, name)(*args, **kwargs)
    with pytest.raises(error, match=says) as awaited:
        run(getattr(app, f"{name}_async")(*args, **kwargs))
    assert str(awaited.value) == str(synced.value)
    written = db.execute(f'SELECT (SELECT count(*) FROM "{app.schema}".events) + '
                         f'(SELECT count(*) FROM "{app.schema}".runs)').fetchone()
    assert written == (0,)


def test_conn_takes_the_kind_of_connection_its_call_drives(app: Durable, dsn: str) -> None:
    with psycopg.connect(dsn) as sync_conn, pytest.raises(ConfigurationError, match="send_async"):
        run(app.send_async("note", {}, conn=sync_conn))  # type: ignore[arg-type]

    async def wrong() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            app.send("note", {}, conn=conn)  # type: ignore[arg-type]

    with pytest.raises(ConfigurationError, match="goes to send_async"):
        run(wrong())


def test_wait_for_run_async_times_out(app: Durable) -> None:
    app.function(id="idle", event="idle")(lambda ctx: None)  # no worker runs it
    [event_id] = app.send("idle", {})
    [waiting] = app.runs_for_event(event_id)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"still queued after 0\.3 s"):
        run(app.wait_for_run_async(waiting.id, timeout=0.3))
    assert 0.3 <= time.monotonic() - began < 5


def runqueue_wait() -> float:
    """Seconds this thread has been ready to run but not given a CPU (Linux's
    schedstat; 0 where there is none): on a loaded machine the OS, not the
    code on the loop, may hold a tick back that long."""
    try:
        with open("/proc/thread-self/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except OSError:
        return 0.0


def test_the_event_loop_is_never_blocked(
    make_app: Callable[..., Durable], db: psycopg.Connection[Any], worker_process: Any
) -> None:
    """A heartbeat ticking every 1 ms keeps ticking (no gap over 20 ms, not
    counting time the OS kept the thread waiting for a CPU) while 1,000
    send_async calls (from 20 concurrent senders) and a
    wait_for_run_async run; the runs execute in a worker process. The
    objects pytest made before are frozen out of the garbage collector: its
    full passes over them are not ours to count."""
    app = make_app()
    app.migrate()
    db.execute(f'CREATE TABLE "{app.schema}".effects (run_id uuid, what text)')
    db.execute(f'CREATE TABLE "{app.schema}".flags (name text)')
    app.function(id="count-once", event="test/count-once")(lambda ctx: None)
    worker_process(threads=2)

    async def main() -> tuple[float, list[str]]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:
            waited = runqueue_wait()
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.001)
                now, waited_now = time.perf_counter(), runqueue_wait()
                gaps.append(now - last - (waited_now - waited))
                last, waited = now, waited_now

        async def sender(first: int) -> list[str]:
            return [i for n in range(first, first + 50)
                    for i in await app.send_async("test/count-once", {"n": n})]

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.05)  # the heartbeat is ticking
        sent = [i for ids in await asyncio.gather(*(sender(50 * s) for s in range(20)))
                for i in ids]
        [last] = await app.runs_for_event_async(sent[-1])
        done = await app.wait_for_run_async(last.id, timeout=60)
        assert done.status == "completed"
        stop.set()
        await beat
        await app.aclose()
        return max(gaps), sent

    gc.collect()
    gc.freeze()
    try:
        worst, sent = run(main())
    finally:
        gc.unfreeze()
    assert len(set(sent)) == 1000
    assert worst < 0.020, f"the event loop stalled for {worst * 1000:.1f} ms"


def test_the_async_pool_opens_per_loop_and_a_given_one_is_never_closed(
    make_app: Callable[..., Durable], dsn: str
) -> None:
    app = make_app()
    app.migrate()
    first = run(app.queue_summary_async())  # one loop...
    assert run(app.queue_summary_async()) == first  # ...closed, and another: a new pool

    async def given() -> bool:
        async with AsyncConnectionPool(dsn, open=False) as pool:
            other = make_app(async_pool=pool)
            await other.get_run_async("01000000-0000-7000-8000-000000000000")
            await other.aclose()
            other.stop()
            return not pool.closed

    assert run(given())
