"""batch=: full batches, timeouts, keys, and concurrent senders and workers."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from pgdurable import Batch, ConfigurationError, Context, Durable, Event, InvalidEventError


def test_a_send_that_fills_a_batch_starts_its_run(app: Durable, db: psycopg.Connection[Any]) -> None:
    @app.function(id="digest", event="mail/received", batch=Batch(max_size=3, timeout="1h"))
    def digest(ctx: Context) -> list[int]:
        return [int(e.data["n"]) for e in ctx.events]

    ids = app.send([Event("mail/received", {"n": n}) for n in range(7)])
    runs = app.list_runs(function="digest")
    assert sorted(len(r.event_ids) for r in runs) == [3, 3]  # created by the send itself
    assert app.runs_for_event(ids[6]) == []  # the seventh waits for its batch
    app.start(threads=1)
    outputs = sorted(app.wait_for_run(r.id, 20).output for r in runs)
    assert outputs == [[0, 1, 2], [3, 4, 5]]
    assert db.execute(f"SELECT event_id FROM {app.schema}.batch_items").fetchall() == [(ids[6],)]


def test_a_batch_starts_when_its_first_event_has_waited_the_timeout(app: Durable) -> None:
    @app.function(id="digest", event="mail/received",
                  batch=Batch(max_size=100, timeout="1s", key="event.data.user"))
    def digest(ctx: Context) -> list[Any]:
        return [ctx.event.data["user"], len(ctx.events)]

    app.start(threads=1, poll_interval=5.0)  # woken by the batch's due time, not a poll
    app.send([Event("mail/received", {"user": u}) for u in ("ann", "bob", "ann")])
    runs = wait_until(lambda: r if len(r := app.list_runs(function="digest")) == 2 else None,
                      timeout=10, what="two batches")
    outputs = sorted(app.wait_for_run(r.id, 20).output for r in runs)
    assert outputs == [["ann", 2], ["bob", 1]]


def test_bad_batches_are_refused(app: Durable) -> None:
    with pytest.raises(ConfigurationError, match="max_size must be an int from 1"):
        app.function(id="a", event="e", batch=Batch(max_size=0, timeout="1s"))(lambda ctx: None)
    with pytest.raises(ConfigurationError, match=r"Batch\.timeout"):
        app.function(id="b", event="e", batch=Batch(max_size=5, timeout="later"))(lambda ctx: None)
    with pytest.raises(ConfigurationError, match="not a dotted field path"):
        app.function(id="c", event="e", batch=Batch(5, "1s", key="data..user"))(lambda ctx: None)

    app.function(id="d", event="e", batch=Batch(5, "1s", key="data.user"))(lambda ctx: None)
    with pytest.raises(InvalidEventError, match=r"batch key of function 'd'.*no value at 'data\.user'"):
        app.send("e", {"other": 1})


def test_concurrent_senders_and_two_workers_lose_and_double_nothing(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    apps = [make_app() for _ in range(3)]
    apps[0].migrate()
    for app in apps:
        @app.function(id="bulk", event="item", batch=Batch(max_size=10, timeout="1s", key="data.k"))
        def bulk(ctx: Context) -> int:
            with lock:
                seen.update(e.id for e in ctx.events if e.id)
            return len(ctx.events)

    for app in apps[:2]:
        app.start(threads=2)
    sent: list[str] = []

    def sender(n: int) -> None:
        for batch in range(20):
            sent.extend(apps[2].send([Event("item", {"k": i % 3, "s": n}) for i in range(batch % 7 + 1)]))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    wait_until(lambda: sum(seen.values()) >= len(sent), timeout=30, what="every event handled")
    assert set(seen) == set(sent) and set(seen.values()) == {1}
    sizes = db.execute(f"SELECT cardinality(event_ids) FROM {apps[2].schema}.runs").fetchall()
    assert all(1 <= size <= 10 for (size,) in sizes)
