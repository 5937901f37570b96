"""idempotency=, rate_limit= and singleton=: decided in the sending transaction."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from conftest import run_of, send_from_threads, status_of, wait_until

from pgdurable import (
    ConfigurationError,
    Context,
    Debounce,
    Durable,
    Event,
    InvalidEventError,
    RateLimit,
    Singleton,
)


def statuses(app: Durable, function: str) -> Counter[str]:
    return Counter(run.status for run in app.list_runs(function=function, limit=1000))


def test_one_run_per_idempotency_key(app: Durable) -> None:
    @app.function(id="fulfil", event="order/paid", idempotency="event.data.order")
    def fulfil(ctx: Context) -> Any:
        return ctx.event.data["order"]

    first = app.send("order/paid", {"order": 1})
    again = app.send([Event("order/paid", {"order": 1}), Event("order/paid", {"order": 2})])
    assert len(app.runs_for_event(first[0])) == 1
    assert app.runs_for_event(again[0]) == []  # same key: no run at all
    assert len(app.runs_for_event(again[1])) == 1
    app.start(threads=1)
    outputs = sorted(app.wait_for_run(r.id, 20).output for r in app.list_runs(function="fulfil"))
    assert outputs == [1, 2]


def test_an_idempotency_key_is_free_again_after_the_window(make_app: Any) -> None:
    app = make_app(dedupe_window="1s")
    app.migrate()
    app.function(id="fulfil", event="order/paid", idempotency=lambda e: e.data["order"])(
        lambda ctx: None)
    app.send("order/paid", {"order": 1})
    wait_until(lambda: app.send("order/paid", {"order": 1}) and len(
        app.list_runs(function="fulfil")) == 2, timeout=10, what="the key to expire")


def test_concurrent_senders_of_one_key_start_one_run(app: Durable) -> None:
    app.function(id="fulfil", event="order/paid", idempotency="data.order")(lambda ctx: None)
    send_from_threads(4, lambda _: [app.send("order/paid", {"order": 9}) for _ in range(5)])
    assert len(app.list_runs(function="fulfil")) == 1


def test_runs_over_the_rate_limit_are_skipped_and_say_why(app: Durable) -> None:
    @app.function(id="sync-crm", event="crm/changed",
                  rate_limit=RateLimit(limit=2, period="1h", key="event.data.user"))
    def sync_crm(ctx: Context) -> str:
        return str(ctx.event.data["user"])

    ids = app.send([Event("crm/changed", {"user": "ann"}) for _ in range(5)])
    bob = run_of(app, "crm/changed", {"user": "bob"})
    app.start(threads=1)
    runs = [r for e in ids for r in app.runs_for_event(e)]
    finished = [app.wait_for_run(r.id, 20) for r in runs]
    assert [r.status for r in finished] == ["completed"] * 2 + ["skipped"] * 3
    error = finished[-1].error
    assert error is not None and error.type == "RateLimited"
    assert error.message == 'rate limit of 2 runs per 01:00:00 reached for key "ann"'
    assert app.wait_for_run(bob, 20).status == "completed"


def test_the_rate_limit_holds_across_concurrent_senders_and_refills(app: Durable) -> None:
    app.function(id="ping", event="ping", rate_limit=RateLimit(limit=5, period="2s"))(
        lambda ctx: None)
    send_from_threads(4, lambda _: [app.send("ping", {}) for _ in range(10)])
    assert statuses(app, "ping") == {"queued": 5, "skipped": 35}
    # a slot comes back once the first admission is 2 s old
    wait_until(lambda: app.send("ping", {}) and statuses(app, "ping")["queued"] == 6,
               timeout=10, what="the limit to refill")


def test_the_rate_limit_holds_in_every_window_not_only_in_buckets(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """Issue 22, s7: limit=3 per 3 s, then a send 1.05 s later and another
    1.05 s after that: only the first three are admitted in those 2.1 s."""
    app.function(id="ping", event="ping", rate_limit=RateLimit(limit=3, period="3s"))(
        lambda ctx: None)
    app.send([Event("ping", {}) for _ in range(3)])
    for _ in range(2):
        time.sleep(1.05)
        app.send("ping", {})
    assert statuses(app, "ping") == {"queued": 3, "skipped": 2}
    admitted = db.execute(f"SELECT cardinality(admitted) FROM {app.schema}.rate_limits").fetchone()
    assert admitted == (3,)


def test_bad_admission_options(app: Durable) -> None:
    with pytest.raises(ConfigurationError, match=r"RateLimit\.limit must be an int"):
        app.function(id="a", event="e", rate_limit=RateLimit(0, "1m"))(lambda ctx: None)
    with pytest.raises(ConfigurationError, match="not a dotted field path"):
        app.function(id="b", event="e", idempotency="data..x")(lambda ctx: None)
    app.function(id="c", event="e", idempotency="data.order")(lambda ctx: None)
    with pytest.raises(InvalidEventError, match=r"idempotency key of function 'c'"):
        app.send("e", {"other": 1})


def test_singleton_skip_lets_one_run_per_key_at_a_time(app: Durable) -> None:
    release = threading.Event()

    @app.function(id="import", event="import/requested", singleton=Singleton(key="data.account"))
    def import_(ctx: Context) -> str:
        ctx.step.run("copy", release.wait, 30)
        return str(ctx.event.data["account"])

    first = run_of(app, "import/requested", {"account": "a"})
    second = run_of(app, "import/requested", {"account": "a"})
    other = run_of(app, "import/requested", {"account": "b"})
    skipped = app.get_run(second)
    assert skipped is not None and skipped.status == "skipped" and skipped.error is not None
    assert skipped.error.message == f'run {first} of this function is in progress for key "a"'
    app.start(threads=2)
    release.set()
    assert app.wait_for_run(first, 20).status == app.wait_for_run(other, 20).status == "completed"
    again = run_of(app, "import/requested", {"account": "a"})  # the key is free once it ended
    assert app.wait_for_run(again, 20).status == "completed"


def test_singleton_cancel_replaces_the_run_in_progress(app: Durable) -> None:
    @app.function(id="rebuild", event="index/changed", singleton=Singleton(mode="cancel"))
    def rebuild(ctx: Context) -> str:
        ctx.step.sleep("debounce", "1h")
        return "rebuilt"

    app.start(threads=1)
    old = run_of(app, "index/changed")
    wait_until(lambda: status_of(app, old) == "sleeping", what="the first run to sleep")
    new = run_of(app, "index/changed")
    replaced = app.wait_for_run(old, 10)
    assert replaced.status == "cancelled" and replaced.error is not None
    assert replaced.error.message == f"replaced by run {new} (singleton)"
    wait_until(lambda: status_of(app, new) == "sleeping", what="the new run to take over")


def test_concurrent_senders_admit_one_singleton(app: Durable) -> None:
    app.function(id="only-one", event="go", singleton=Singleton(key="data.k"))(lambda ctx: None)
    send_from_threads(4, lambda _: [app.send("go", {"k": 1}) for _ in range(5)])
    assert statuses(app, "only-one") == {"queued": 1, "skipped": 19}


def test_debounce_starts_one_run_with_the_last_event_once_the_key_is_quiet(app: Durable) -> None:
    @app.function(id="reindex", event="doc/edited", debounce=Debounce(period="1s", key="data.doc"))
    def reindex(ctx: Context) -> Any:
        return ctx.event.data["rev"]

    app.start(threads=1, poll_interval=5.0)  # woken by the due time, not a poll
    ids = app.send([Event("doc/edited", {"doc": d, "rev": r}) for d, r in
                    (("a", 1), ("b", 1), ("a", 2))])
    sent_last = app.send("doc/edited", {"doc": "a", "rev": 3})
    assert app.runs_for_event(sent_last[0]) == []  # not yet: it fires when the key is quiet
    runs = wait_until(lambda: r if len(r := app.list_runs(function="reindex")) == 2 else None,
                      what="one run per key")
    outputs = sorted(app.wait_for_run(r.id, 20).output for r in runs)
    assert outputs == [1, 3]
    assert app.runs_for_event(ids[0]) == [] and len(app.runs_for_event(sent_last[0])) == 1


def test_debounce_timeout_caps_the_delay(app: Durable) -> None:
    @app.function(id="autosave", event="doc/typed",
                  debounce=Debounce(period="1s", timeout="2s"))
    def autosave(ctx: Context) -> Any:
        return ctx.event.data["n"]

    app.start(threads=1)
    first = time.monotonic()
    n = 0
    while not app.list_runs(function="autosave") and time.monotonic() - first < 10:
        n += 1
        app.send("doc/typed", {"n": n})  # never quiet for a whole period
        time.sleep(0.2)  # the typing being simulated
    waited = time.monotonic() - first
    [run] = app.list_runs(function="autosave")
    assert 1.8 <= waited <= 5  # the 2 s cap, not the never-ending 1 s quiet period
    assert 5 <= app.wait_for_run(run.id, 20).output <= n  # the latest event at the cap


@pytest.mark.parametrize("option", [
    {"singleton": Singleton(key="data.k")},
    {"rate_limit": RateLimit(limit=1, period="1h", key="data.k")},
    {"idempotency": "data.k"},
])
def test_a_debounced_run_is_admitted_when_it_starts_with_its_last_event(
    app: Durable, db: psycopg.Connection[Any], option: dict[str, Any]
) -> None:
    """Issue 22, s9: not one admission per event at send time (a phantom run
    holding the singleton key; the run skipped as rate limited)."""
    @app.function(id="settle", event="e", debounce=Debounce(period="300ms", key="data.k"),
                  **option)
    def settle(ctx: Context) -> int:
        return int(ctx.event.data["n"])

    app.start(threads=2)
    app.send([Event("e", {"k": 1, "n": n}) for n in (1, 2)])
    wait_until(lambda: app.list_runs(function="settle"), what="the debounced run")
    [run] = app.list_runs(function="settle")
    assert app.wait_for_run(run.id, 20).output == 2
    assert statuses(app, "settle") == {"completed": 1}
    orphans = db.execute(f"SELECT count(*) FROM {app.schema}.singletons s WHERE NOT EXISTS "
                         f"(SELECT FROM {app.schema}.queue q WHERE q.run_id = s.run_id)").fetchone()
    assert orphans == (0,)
    if "singleton" in option:  # the key is free again: a later event starts a run
        app.send("e", {"k": 1, "n": 3})
        wait_until(lambda: statuses(app, "settle") == {"completed": 2}, what="a second run")


def test_a_run_one_option_refuses_spends_no_other_option_s_budget(app: Durable) -> None:
    """Issue 22's pattern "one option's bookkeeping spent before another has
    decided", at send time: a rate-limited run does not use up its
    idempotency key, and a singleton-skipped run takes no place in the rate
    limit's window."""
    app.function(id="once", event="once", idempotency="data.order",
                 rate_limit=RateLimit(limit=1, period="1s"))(lambda ctx: None)
    app.send("once", {"order": "a"})  # admitted: takes the one place of this second
    app.send("once", {"order": "b"})  # rate limited: its key must stay unused
    assert statuses(app, "once") == {"queued": 1, "skipped": 1}
    wait_until(lambda: app.send("once", {"order": "b"}) and statuses(app, "once")["queued"] == 2,
               timeout=10, what="order b to run once the window frees")

    gate = threading.Event()
    app.function(id="solo", event="solo", singleton=Singleton(key="data.k"),
                 rate_limit=RateLimit(limit=2, period="1h", key="data.k"))(
        lambda ctx: ctx.step.run("hold", lambda: gate.wait(20)))
    app.start(threads=2)
    first = run_of(app, "solo", {"k": 1})
    wait_until(lambda: status_of(app, first) == "running", what="the first run")
    skipped = run_of(app, "solo", {"k": 1})  # a singleton skip: no place taken
    assert status_of(app, skipped) == "skipped"
    gate.set()
    assert app.wait_for_run(first, 20).status == "completed"
    second = run_of(app, "solo", {"k": 1})
    assert app.wait_for_run(second, 20).status == "completed", "the limit of 2 was not spent"
