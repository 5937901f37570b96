from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import count
from pydantic import BaseModel

from pgdurable import (
    Context,
    Durable,
    Event,
    InvalidEventError,
    PayloadTooLargeError,
)
from pgdurable._events import new_event_id


class ReceiptProcess(BaseModel):
    user_id: str
    file_key: str



def register_two(app: Durable) -> None:
    @app.function(id="first", event="receipt/process")
    def first(ctx: Context) -> None: ...

    @app.function(id="second", event=["receipt/process", "other"])
    def second(ctx: Context) -> None: ...


def test_send_fans_out_and_runs_exist_at_once(app: Durable) -> None:
    register_two(app)
    [event_id] = app.send("receipt/process", {"user_id": "u1", "file_key": "k"})
    runs = app.runs_for_event(event_id)
    assert sorted(r.function_id for r in runs) == ["first", "second"]
    assert {r.status for r in runs} == {"queued"}
    assert all(r.event_ids == (event_id,) for r in runs)


def test_event_ids_are_time_ordered(app: Durable) -> None:
    ids = [app.send("x", {"i": i})[0] for i in range(20)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20


def test_generated_ids_increase_within_a_millisecond() -> None:
    ids = [new_event_id() for _ in range(10_000)]  # many per millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122
               and str(uuid.UUID(i)) == i for i in ids)  # canonical text


def test_same_id_is_acted_on_once(app: Durable, db: psycopg.Connection[Any]) -> None:
    register_two(app)
    assert app.send("receipt/process", {"n": 1}, id="dedupe-1") == ["dedupe-1"]
    assert app.send("receipt/process", {"n": 2}, id="dedupe-1") == ["dedupe-1"]
    assert app.send([Event("receipt/process", {"n": 3}, id="dedupe-1")] * 3) == ["dedupe-1"] * 3
    assert count(db, app.schema, "events") == 1
    assert len(app.runs_for_event("dedupe-1")) == 2
    data = db.execute(f"SELECT data FROM {app.schema}.events").fetchone()
    assert data == ({"n": 1},)


def test_a_stored_event_is_never_rewritten_even_after_the_window(make_app: Any) -> None:
    """Issue 22, s13: a run in flight must not see its event change under it."""
    app = make_app(dedupe_window="0s")
    app.migrate()
    seen: list[Any] = []
    gate = threading.Event()

    @app.function(id="reader", event="receipt/process")
    def reader(ctx: Context) -> None:
        ctx.step.run("wait", lambda: gate.wait(20))
        seen.append((ctx.event.name, dict(ctx.event.data)))

    app.start(threads=1)
    app.send("receipt/process", {"n": 1}, id="again")
    app.send("other/name", {"n": 2}, id="again")
    gate.set()
    [run] = app.runs_for_event("again")
    app.wait_for_run(run.id, 20)
    assert seen == [("receipt/process", {"n": 1})]
    stored = app.get_event("again")
    assert stored is not None and (stored.name, stored.data) == ("receipt/process", {"n": 1})


def test_a_negative_window_from_a_caller_rewrites_nothing(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    app.send("receipt/process", {"n": 1}, id="kept")
    db.execute(f"SELECT {app.schema}.send_events(%s::jsonb, '[]', '-1 day')",
               ('[["kept", "evil", {"n": 666}, null]]',))
    stored = app.get_event("kept")
    assert stored is not None and (stored.name, stored.data) == ("receipt/process", {"n": 1})


class CountingCursor(psycopg.Cursor[Any]):
    executed = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.executed += 1
        return super().execute(*args, **kwargs)


def test_a_thousand_events_take_one_round_trip(app: Durable, dsn: str) -> None:
    register_two(app)
    events = [Event("receipt/process", {"i": i}) for i in range(1000)]
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        CountingCursor.executed = 0
        ids = app.send(events, conn=conn)
        assert CountingCursor.executed == 1
    assert len(set(ids)) == 1000
    assert len(app.list_runs(limit=5000)) == 2000


def test_schema_validation_names_event_and_field(app: Durable, db: psycopg.Connection[Any]) -> None:
    register_two(app)
    app.event("receipt/process", ReceiptProcess)
    with pytest.raises(InvalidEventError, match=r"'receipt/process'.*file_key"):
        app.send("receipt/process", {"user_id": "u1"})
    with pytest.raises(InvalidEventError, match="user_id"):
        app.send([Event("receipt/process", {"user_id": "u", "file_key": "k"}),
                  Event("receipt/process", {"user_id": 5, "file_key": "k"})])
    assert count(db, app.schema, "events") == 0
    assert count(db, app.schema, "runs") == 0
    app.send("receipt/process", ReceiptProcess(user_id="u", file_key="k"))
    assert count(db, app.schema, "runs") == 2


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("", {}, "must not be empty"),
        (5, {}, "must be a str"),
        ("a\x00b", {}, "NUL"),
        ("x" * 300, {}, "longer than"),
        ("ok", [1, 2], "must be a dict"),
        ("ok", {"f": float("nan")}, "NaN or Infinity"),
        ("ok", {"o": object()}, "not JSON-serializable"),
        ("ok", {"s": "a\x00b"}, "NUL"),
    ],
)
def test_bad_events_are_rejected_before_writing(
    app: Durable, db: psycopg.Connection[Any], name: Any, data: Any, message: str
) -> None:
    with pytest.raises(InvalidEventError, match=message):
        app.send(name, data)
    assert count(db, app.schema, "events") == 0


def test_payload_size_limit(make_app: Any, db: psycopg.Connection[Any]) -> None:
    app = make_app(max_event_bytes=1000)
    app.migrate()
    with pytest.raises(PayloadTooLargeError, match=r"over the limit of 1,000 bytes"):
        app.send([Event("small", {"a": 1}), Event("big", {"blob": "x" * 2000})])
    assert count(db, app.schema, "events") == 0


def test_default_payload_limit_is_one_mebibyte(app: Durable) -> None:
    app.send("fits", {"blob": "x" * 1_000_000})
    with pytest.raises(PayloadTooLargeError, match="1,048,576"):
        app.send("too-big", {"blob": "x" * 1_048_600})


def test_naive_ts_is_rejected(app: Durable) -> None:
    with pytest.raises(InvalidEventError, match="naive"):
        app.send("a", {}, ts=datetime.now())


def test_bad_ids_are_rejected(app: Durable) -> None:
    with pytest.raises(InvalidEventError, match="id of event"):
        app.send("a", {}, id="")
    with pytest.raises(InvalidEventError, match="id of event"):
        app.send("a", {}, id=12)  # type: ignore[arg-type]


def test_mixing_event_objects_and_arguments_is_rejected(app: Durable) -> None:
    with pytest.raises(InvalidEventError, match="go with an event name"):
        app.send([Event("a", {})], {"x": 1})
    with pytest.raises(InvalidEventError, match="expected Event"):
        app.send([{"name": "a"}])  # type: ignore[list-item]


def test_unknown_event_is_stored_without_runs(app: Durable, db: psycopg.Connection[Any]) -> None:
    register_two(app)
    [event_id] = app.send("nobody/listens", {"a": 1})
    assert app.runs_for_event(event_id) == []
    assert db.execute(f"SELECT id, name FROM {app.schema}.unmatched_events").fetchall() == [
        (event_id, "nobody/listens")]


def test_send_joins_the_callers_transaction(app: Durable, dsn: str, db: psycopg.Connection[Any]) -> None:
    register_two(app)
    with psycopg.connect(dsn) as conn:
        [rolled_back] = app.send("receipt/process", {"a": 1}, conn=conn)
        assert len(app.runs_for_event(rolled_back)) == 0  # not visible outside yet
        conn.rollback()
        [committed] = app.send("receipt/process", {"a": 2}, conn=conn)
        conn.commit()
    assert app.runs_for_event(rolled_back) == []
    assert len(app.runs_for_event(committed)) == 2
    assert count(db, app.schema, "events") == 1


def test_send_joins_a_pooled_transaction(app: Durable) -> None:
    register_two(app)
    with pytest.raises(RuntimeError), app.connection() as conn:
        [event_id] = app.send("receipt/process", {"a": 1}, conn=conn)
        raise RuntimeError("the app's own work failed")
    assert app.runs_for_event(event_id) == []


def test_future_ts_delays_the_start(app: Durable) -> None:
    @app.function(id="later", event="later")
    def later(ctx: Context) -> str:
        return "ran"

    ts = datetime.now(UTC) + timedelta(seconds=1.5)
    [event_id] = app.send("later", {}, ts=ts)
    app.start(threads=1, poll_interval=0.1)
    [run] = app.runs_for_event(event_id)
    done = app.wait_for_run(run.id, timeout=20)
    assert done.status == "completed"
    assert done.started_at is not None and done.started_at >= ts
