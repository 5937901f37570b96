"""Retention and prune: what goes when, and what never goes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import run_of, wait_until

from pgdurable import (
    ConfigurationError,
    Context,
    Durable,
    Event,
    NonRetriableError,
    RateLimit,
    Retention,
    Run,
)

DAY = timedelta(days=1)


def finished(app: Durable, run_id: str) -> Run:
    run = app.wait_for_run(run_id, 20)
    assert run.finished_at is not None
    return run


def stored(db: psycopg.Connection[Any], schema: str, run_id: str) -> dict[str, int]:
    """How many rows of each table of history this run has."""
    row = db.execute(f"""SELECT (SELECT count(*) FROM {schema}.runs WHERE id = %(r)s),
                                (SELECT count(*) FROM {schema}.results WHERE run_id = %(r)s),
                                (SELECT count(*) FROM {schema}.steps WHERE run_id = %(r)s)""",
                     {"r": run_id}).fetchone()
    assert row is not None
    return dict(zip(("runs", "results", "steps"), row, strict=True))


def event_stored(db: psycopg.Connection[Any], schema: str, event_id: str) -> bool:
    return bool(db.execute(f"SELECT count(*) FROM {schema}.events WHERE id = %s",
                           (event_id,)).fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("make", [
    lambda: Retention(completed="soon"),
    lambda: Retention(failed=-1),
    lambda: Retention(skipped=True),
])
def test_invalid_retention_is_refused(make: Any) -> None:
    with pytest.raises(ConfigurationError, match="Retention"):
        make()


def test_invalid_retention_options_are_refused(make_app: Any) -> None:
    with pytest.raises(ConfigurationError, match="retention"):
        make_app(retention="7d")
    with pytest.raises(ConfigurationError, match="prune_interval"):
        make_app(prune_interval="10s")
    app = make_app()
    with pytest.raises(ConfigurationError, match="app-wide"):
        app.function(id="f", event="e", retention=Retention(audit="1d"))(lambda ctx: 1)
    with pytest.raises(ConfigurationError, match="retention takes"):
        app.function(id="g", event="e", retention="1d")(lambda ctx: 1)


def test_a_run_goes_once_its_retention_has_passed_and_not_before(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    @app.function(id="two-steps", event="go")
    def two_steps(ctx: Context) -> int:
        return ctx.step.run("a", lambda: 1) + ctx.step.run("b", lambda: 2)

    app.start(threads=2)
    [event_id] = app.send("go", {})
    [run] = wait_until(lambda: app.runs_for_event(event_id))
    done = finished(app, run.id)
    assert done.finished_at is not None
    assert stored(db, app.schema, run.id) == {"runs": 1, "results": 1, "steps": 2}

    before = app.prune(as_of=done.finished_at + 7 * DAY - timedelta(seconds=1))
    assert before["runs"] == 0 and app.get_run(run.id) is not None
    after = app.prune(as_of=done.finished_at + 7 * DAY + timedelta(seconds=1))
    assert after["runs"] == 1
    assert app.get_run(run.id) is None
    assert stored(db, app.schema, run.id) == {"runs": 0, "results": 0, "steps": 0}
    assert after["events"] == 1 and not event_stored(db, app.schema, event_id)


def test_each_status_and_function_has_its_own_retention(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    app = make_app(retention=Retention(failed="10d"))
    app.migrate()

    @app.function(id="short", event="e", retention=Retention(completed="1h"))
    def short(ctx: Context) -> str:
        return "short"

    @app.function(id="long", event="e", retries=0)
    def long(ctx: Context) -> str:
        if ctx.event.data.get("fail"):
            raise NonRetriableError("no")
        return "long"

    app.start(threads=2)
    events = [app.send("e", {"n": n})[0] for n in range(10)] + app.send("e", {"fail": True})
    runs = {r.id: r for e in events for r in app.runs_for_event(e)}
    for run_id in runs:
        runs[run_id] = app.wait_for_run(run_id, 20)
    latest = max(r.finished_at for r in runs.values() if r.finished_at)
    by_kind = {kind: {r.id for r in runs.values() if (r.function_id, r.status) == kind}
               for kind in [("short", "completed"), ("long", "completed"), ("long", "failed")]}
    assert [len(v) for v in by_kind.values()] == [11, 10, 1]

    # After an hour only the short-lived runs go; their events stay (the long ones need them).
    assert app.prune(as_of=latest + timedelta(hours=1, seconds=1))["runs"] == 11
    assert all(app.get_run(r) is None for r in by_kind[("short", "completed")])
    assert all(app.get_run(r) is not None for r in by_kind[("long", "completed")])
    assert all(event_stored(db, app.schema, e) for e in events)
    # After 7 days the completed ones go, whose partition is dropped whole; the failed run stays.
    week = app.prune(as_of=latest + 7 * DAY + timedelta(seconds=1))
    assert week["runs"] == 10
    [failed] = by_kind[("long", "failed")]
    assert app.get_run(failed) is not None and stored(db, app.schema, failed)["results"] == 1
    assert event_stored(db, app.schema, events[-1]) and not event_stored(db, app.schema, events[0])
    # And after 10 days, the failed one.
    assert app.prune(as_of=latest + 10 * DAY + timedelta(seconds=1))["runs"] == 1
    assert app.get_run(failed) is None and not event_stored(db, app.schema, events[-1])


def test_unfinished_runs_are_never_pruned_and_finish_after_their_partition_went(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    gate = threading.Event()

    @app.function(id="sleeper", event="sleep")
    def sleeper(ctx: Context) -> str:
        ctx.step.run("before", lambda: 1)
        ctx.step.sleep("long", "40d")
        return "woke"

    @app.function(id="quick", event="quick")
    def quick(ctx: Context) -> str:
        return "done"

    @app.function(id="waiter", event="wait")
    def waiter(ctx: Context) -> Any:
        gate.set()
        return ctx.step.wait_for_event("w", event="go", timeout="60d")

    app.start(threads=2)
    sleeping = run_of(app, "sleep")
    waiting = run_of(app, "wait")
    quick_runs = [run_of(app, "quick") for _ in range(30)]
    for run_id in quick_runs:
        finished(app, run_id)
    wait_until(lambda: app.get_run(sleeping).status == "sleeping", what="the sleep")  # type: ignore[union-attr]
    wait_until(lambda: app.get_run(waiting).status == "waiting", what="the wait")  # type: ignore[union-attr]
    latest = max(finished(app, r).finished_at for r in quick_runs)  # type: ignore[type-var]

    removed = app.prune(as_of=latest + 60 * DAY)
    assert removed["runs"] == 30 and removed["partitions_dropped"] >= 1
    assert stored(db, app.schema, sleeping) == {"runs": 1, "results": 0, "steps": 2}
    assert app.get_run(waiting) is not None

    # Both go on: the waiter gets its event; the sleeper is woken early by hand.
    app.send("go", {"x": 1})
    assert app.wait_for_run(waiting, 20).output["data"] == {"x": 1}
    db.execute(f"UPDATE {app.schema}.queue SET available_at = now() WHERE run_id = %s", (sleeping,))
    assert app.wait_for_run(sleeping, 20).output == "woke"
    # They live in the partition of runs kept beyond their day.
    kept = db.execute(f"SELECT count(*) FROM {app.schema}.results_kept WHERE run_id IN (%s, %s)",
                      (sleeping, waiting)).fetchone()
    assert kept == (2,)


def test_the_dedupe_window_holds_after_a_prune(make_app: Any, db: psycopg.Connection[Any]) -> None:
    app = make_app(retention=Retention(completed=0), dedupe_window="1h",
                   prune_interval=None)  # only the prunes of the test
    app.migrate()
    app.function(id="f", event="e")(lambda ctx: 1)
    app.start(threads=1)
    run_id = run_of(app, "e")
    app.send("e", {}, id="order-7")
    [run] = wait_until(lambda: app.runs_for_event("order-7"))
    done = finished(app, run.id)
    finished(app, run_id)
    at = done.finished_at + timedelta(seconds=1)  # type: ignore[operator]

    # The runs go at once, but not the event while its dedupe window lasts.
    assert app.prune(as_of=at)["runs"] == 2
    assert event_stored(db, app.schema, "order-7")
    assert app.send("e", {}, id="order-7") == ["order-7"]
    assert app.runs_for_event("order-7") == []  # still a duplicate: no run
    # Once past it (and past its day of history), the id is free again.
    app.prune(as_of=at + 2 * DAY)
    assert not event_stored(db, app.schema, "order-7")
    app.send("e", {}, id="order-7")
    assert len(app.runs_for_event("order-7")) == 1


def test_idempotency_keys_and_rate_limit_logs_go_when_their_windows_end(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    app = make_app(dedupe_window="1h")
    app.migrate()
    app.function(id="once", event="o", idempotency="event.data.k")(lambda ctx: 1)
    app.function(id="limited", event="l", rate_limit=RateLimit(limit=1, period="10m"))(
        lambda ctx: 1)
    app.send("o", {"k": 1})
    app.send("l", {})
    now = app.prune(as_of=None)
    assert (now["idempotency_keys"], now["rate_limits"]) == (0, 0)
    later = app.prune(as_of=datetime.now().astimezone() + timedelta(hours=1, minutes=1))
    assert (later["idempotency_keys"], later["rate_limits"]) == (1, 1)
    counts = db.execute(f"""SELECT (SELECT count(*) FROM {app.schema}.run_keys),
                                   (SELECT count(*) FROM {app.schema}.rate_limits)""").fetchone()
    assert counts == (0, 0)
    # The rate limit starts afresh: one more run is admitted, the next is not.
    app.send("l", {})
    app.send("l", {})
    assert sorted(r.status for r in app.list_runs(function="limited")) == [
        "queued", "queued", "skipped"]


def test_concurrent_pruners_share_the_work_while_runs_go_on(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    policy = Retention(completed="1h")
    app = make_app(retention=policy)
    app.migrate()
    app.function(id="f", event="e")(lambda ctx: ctx.step.run("s", lambda: 1))
    app.function(id="kept", event="late", retention=Retention(completed=None))(
        lambda ctx: ctx.step.run("s", lambda: 1))
    app.start(threads=4)
    app.send([Event("e", {"n": n}) for n in range(300)])
    done = f"SELECT count(*), max(finished_at) FROM {app.schema}.results"
    wait_until(lambda: db.execute(done).fetchone()[0] == 300, what="300 runs")  # type: ignore[index]
    latest = db.execute(done).fetchone()[1]  # type: ignore[index]

    pruners = [make_app(retention=policy) for _ in range(3)]
    start = threading.Barrier(4)
    counts: list[dict[str, int]] = []
    errors: list[BaseException] = []
    in_flight: list[str] = []

    def prune(pruner: Durable) -> None:
        start.wait()
        try:
            counts.append(pruner.prune(as_of=latest + timedelta(hours=2)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prune, args=(p,)) for p in pruners]
    for thread in threads:
        thread.start()
    start.wait()
    while any(t.is_alive() for t in threads):  # new runs all along
        in_flight += app.send([Event("late", {"n": n}) for n in range(5)])
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(c["runs"] for c in counts)[-1] == 300 and sum(c["runs"] for c in counts) == 300
    runs = [r for e in in_flight for r in app.runs_for_event(e)]
    assert len(runs) == len(in_flight)
    for run in runs:
        assert app.wait_for_run(run.id, 30).output == 1
    assert stored(db, app.schema, runs[-1].id) == {"runs": 1, "results": 1, "steps": 1}


def test_the_audit_log_keeps_its_own_retention(make_app: Any, db: psycopg.Connection[Any]) -> None:
    app = make_app(retention=Retention(audit="30d"))
    app.migrate()
    s = app.schema
    db.execute(f"""INSERT INTO {s}.rls_audit_log (at, kind, tag, db_role)
                   VALUES (now() - interval '31 days', 'bypass', 'old', 'x'),
                          (now() - interval '29 days', 'bypass', 'recent', 'x')""")
    assert app.prune()["audit"] == 1
    assert db.execute(f"SELECT array_agg(tag) FROM {s}.rls_audit_log").fetchone() == (["recent"],)


def test_dry_run_counts_and_removes_nothing(app: Durable, db: psycopg.Connection[Any]) -> None:
    app.function(id="f", event="e")(lambda ctx: 1)
    app.start(threads=1)
    run_id = run_of(app, "e")
    at = finished(app, run_id).finished_at + 8 * DAY  # type: ignore[operator]
    assert app.prune(as_of=at, dry_run=True) == {"runs": 1, "events": 0}
    assert app.get_run(run_id) is not None
    assert app.prune(as_of=at)["runs"] == 1


def test_workers_prune_in_the_background_and_say_so(
    make_app: Any, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(retention=Retention(completed=0), prune_interval="1m")
    app.migrate()
    app.function(id="f", event="e")(lambda ctx: 1)
    last = f"SELECT removed, next_due - started_at FROM {app.schema}.prune_log ORDER BY id DESC"
    caplog.set_level(logging.DEBUG, logger="pgdurable.worker")  # nothing removed: DEBUG
    app.start(threads=1)
    removed, interval = wait_until(lambda: db.execute(last).fetchone(), what="a prune")
    assert interval == timedelta(minutes=1) and set(removed) >= {"runs", "events", "audit"}
    wait_until(lambda: "pruned what expired: 0 runs" in caplog.text, what="the log line")
    status = db.execute(f"SELECT table_name, next_prune_due FROM {app.schema}.retention_status"
                        ).fetchall()
    assert {name for name, _ in status} >= {"events", "runs", "results", "steps", "rls_audit_log"}
    assert all(due is not None for _, due in status)


def test_a_worker_with_pruning_off_still_makes_partitions(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    app = make_app(prune_interval=None)
    app.migrate()
    s = app.schema
    db.execute(f"SELECT {s}.drop_partition(suffix, now()) FROM {s}.history_partitions "
               f"WHERE lower_id IS NOT NULL")
    app.function(id="f", event="e")(lambda ctx: 1)
    app.start(threads=1)
    ahead = f"SELECT count(*) FROM {s}.history_partitions WHERE lower_id IS NOT NULL"
    wait_until(lambda: db.execute(ahead).fetchone()[0] == 2, what="today and tomorrow")  # type: ignore[index]
    assert db.execute(f"SELECT count(*) FROM {s}.prune_log").fetchone() == (0,)


def test_cli_prune_follows_the_recorded_retention(
    app: Durable, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pgdurable.cli import main

    app.function(id="f", event="e", retention=Retention(completed="2d"))(lambda ctx: 1)
    app.start(threads=1)  # records the policies
    run_id = run_of(app, "e")
    at = (finished(app, run_id).finished_at + 3 * DAY).isoformat()  # type: ignore[operator]
    base = ["prune", "--dsn", dsn, "--schema", app.schema, "--as-of", at]

    assert main([*base, "--dry-run"]) == 0
    assert "would remove          1 runs" in capsys.readouterr().out
    assert app.get_run(run_id) is not None
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 1
    assert app.get_run(run_id) is None
    assert main([*base[:-2], "--as-of", "yesterday"]) == 2
    assert "neither an ISO 8601 time nor a duration" in capsys.readouterr().err


UNDO_13 = """
DROP TABLE {s}.retention, {s}.history_partitions, {s}.prune_log, {s}.event_refs CASCADE;
DROP INDEX {s}.events_received, {s}.rls_audit_log_at;
ALTER TABLE {s}.rate_limits DROP COLUMN period;
DELETE FROM {s}.schema_version WHERE version = 13;
"""
FLATTEN = """
CREATE TABLE {s}.{t}_v12 (LIKE {s}.{t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
INSERT INTO {s}.{t}_v12 SELECT * FROM {s}.{t};
DROP TABLE {s}.{t} CASCADE;
ALTER TABLE {s}.{t}_v12 RENAME TO {t};
ALTER TABLE {s}.{t} ADD CONSTRAINT {t}_pkey PRIMARY KEY ({key});
"""
V12_INDEXES = """
CREATE INDEX runs_first_event ON {s}.runs ((event_ids[1]));
CREATE INDEX runs_function_created ON {s}.runs (function_id, created_at DESC);
CREATE INDEX runs_many_events ON {s}.runs USING gin (event_ids) WHERE cardinality(event_ids) > 1;
"""


def test_upgrading_keeps_every_run_and_unfinished_ones_finish(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    """Runs of every status, made by this version, in tables put back as
    they were before migration 13 (not partitioned): the upgrade keeps them
    all, and the unfinished ones (mid-journal among them) then finish."""
    app = make_app()
    app.migrate()
    release = threading.Event()
    executed: list[str] = []

    @app.function(id="steps", event="steps", retries=100)
    def steps(ctx: Context) -> str:
        ctx.step.run("one", lambda: executed.append("one"))
        if not release.is_set():
            raise RuntimeError("not yet")  # retried later: the journal holds step one
        return ctx.step.run("two", lambda: "two")

    @app.function(id="sleeps", event="sleeps")
    def sleeps(ctx: Context) -> str:
        ctx.step.sleep("nap", "1h")
        return "slept"

    @app.function(id="waits", event="waits")
    def waits(ctx: Context) -> Any:
        return ctx.step.wait_for_event("w", event="go", timeout="1h").data

    @app.function(id="ends", event="ends", retries=0,
                  rate_limit=RateLimit(limit=1, period="1h", key="event.data.how"))
    def ends(ctx: Context) -> str:
        if ctx.event.data["how"] == "fail":
            raise NonRetriableError("failed")
        return "done"

    ended = [run_of(app, "ends", {"how": how}) for how in ("ok", "fail", "ok")]
    app.start(threads=2)
    mid, sleeping, waiting = run_of(app, "steps"), run_of(app, "sleeps"), run_of(app, "waits")
    cancelled = run_of(app, "waits")
    wait_until(lambda: executed and all(
        app.get_run(r).status in ("sleeping", "waiting") for r in (sleeping, waiting, cancelled)),
        what="runs parked")  # type: ignore[union-attr]
    app.cancel(cancelled)
    app.stop()
    before = {r: app.get_run(r) for r in [*ended, mid, sleeping, waiting, cancelled]}
    assert {r.status for r in before.values() if r} == {
        "completed", "failed", "skipped", "queued", "sleeping", "waiting", "cancelled"}

    s = app.schema
    with db.transaction():
        db.execute(UNDO_13.format(s=s))
        for table, key in (("runs", "id"), ("results", "run_id"), ("steps", "run_id, step_key")):
            db.execute(FLATTEN.format(s=s, t=table, key=key))
        db.execute(V12_INDEXES.format(s=s))
    assert app.migrate() == [13]
    assert {r: app.get_run(r) for r in before} == before
    in_first = db.execute(f"""SELECT count(*) FROM {s}.runs r JOIN pg_class c ON c.oid = r.tableoid
                              WHERE c.relname LIKE 'runs_until_%%'""").fetchone()
    assert in_first == (len(before),)

    release.set()
    db.execute(f"UPDATE {s}.queue SET available_at = now() WHERE run_id = %s", (sleeping,))
    app.start(threads=2)
    app.send("go", {"x": 1})
    assert app.wait_for_run(mid, 20).output == "two"
    assert executed == ["one"]  # step one came from the journal
    assert app.wait_for_run(sleeping, 20).output == "slept"
    assert app.wait_for_run(waiting, 20).output == {"x": 1}


def test_an_old_event_stays_while_a_later_run_refers_to_it(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    """A run started one by one (a replay, a batch) may refer to an event
    sent days before it: the event stays as long as that run does."""
    app = make_app(retention=Retention(completed=0), dedupe_window="1h",
                   prune_interval=None)  # only the prunes of the test
    app.migrate()
    s = app.schema
    app.function(id="f", event="e")(lambda ctx: ctx.event.data)
    db.execute(f"""INSERT INTO {s}.events (id, name, data, ts, received_at)
                   VALUES ('old', 'e', '{{"n": 1}}', now() - interval '10 days',
                           now() - interval '10 days')""")
    [run_id] = db.execute(f"SELECT {s}.start_run('f', ARRAY['old'], 0)").fetchone()  # type: ignore[misc]
    assert app.prune()["events"] == 0 and event_stored(db, s, "old")
    app.start(threads=1)
    assert app.wait_for_run(str(run_id), 20).output == {"n": 1}
    removed = app.prune(as_of=datetime.now().astimezone() + timedelta(seconds=5))
    assert (removed["runs"], removed["events"]) == (1, 1)
    assert not event_stored(db, s, "old")


def test_three_processes_prune_at_once(app: Durable, dsn: str, db: psycopg.Connection[Any]) -> None:
    """Three `pgdurable prune` processes started together: one removes what
    expired, the others wait for it and find nothing left; none fails."""
    app.function(id="f", event="e", retention=Retention(completed="1h"))(lambda ctx: 1)
    app.start(threads=4)  # records the policy
    app.send([Event("e", {"n": n}) for n in range(100)])
    done = f"SELECT count(*), max(finished_at) FROM {app.schema}.results"
    wait_until(lambda: db.execute(done).fetchone()[0] == 100, what="100 runs")  # type: ignore[index]
    at = (db.execute(done).fetchone()[1] + timedelta(hours=2)).isoformat()  # type: ignore[index]
    command = [sys.executable, "-m", "pgdurable", "prune", "--dsn", dsn, "--schema", app.schema,
               "--as-of", at, "--json"]
    pruners = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    outcomes = [p.communicate(timeout=60) for p in pruners]
    assert [p.returncode for p in pruners] == [0, 0, 0], [err for _, err in outcomes]
    assert sorted(json.loads(out)["runs"] for out, _ in outcomes) == [0, 0, 100]
    assert db.execute(f"SELECT count(*) FROM {app.schema}.runs").fetchone() == (0,)


def test_partitions_hold_the_app_s_partition_interval(
    make_app: Any, db: psycopg.Connection[Any]
) -> None:
    with pytest.raises(ConfigurationError, match="partition_interval"):
        make_app(partition_interval="30s")
    app = make_app(partition_interval="1h", retention=Retention(completed=0),
                   prune_interval=None)  # only the prunes of the test
    app.migrate()  # records the interval, then makes the partitions: this hour's and the next
    s = app.schema
    bounds = db.execute(f"""SELECT {s}.uuid_time(upper_id) - {s}.uuid_time(lower_id)
                            FROM {s}.history_partitions ORDER BY lower_id""").fetchall()
    assert bounds == [(timedelta(hours=1),)] * 2
    app.function(id="f", event="e")(lambda ctx: 1)
    app.start(threads=1)
    done = finished(app, run_of(app, "e"))
    removed = app.prune(as_of=done.finished_at + timedelta(hours=1))  # type: ignore[operator]
    assert removed["runs"] == 1 and removed["partitions_dropped"] == 1
