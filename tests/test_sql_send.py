"""Sends from SQL (send, send_batch) and event triggers: runs resolved from
the registry workers record, as app.send resolves them."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import BENCH, count, load_bench, wait_until

from pgdurable import (
    Concurrency,
    ConfigurationError,
    Context,
    Durable,
    Event,
    InvalidEventError,
    Priority,
    RateLimit,
)
from pgdurable import _serde as serde
from pgdurable._expressions import key_of


def registered(app: Durable) -> Durable:
    """`app` with its functions recorded in the registry, as a worker that
    started and stopped leaves them; nothing runs what SQL sends."""
    app.start(threads=1)
    app.stop()
    return app



def runs_of(db: psycopg.Connection[Any], schema: str, event_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        f"SELECT r.function_id, q.available_at, q.slot_keys FROM {schema}.runs r "
        f"LEFT JOIN {schema}.queue q ON q.run_id = r.id "
        f"WHERE r.event_ids[1] = %s ORDER BY r.function_id", (event_id,)).fetchall()


@pytest.mark.skipif(shutil.which("psql") is None, reason="needs the psql client")
def test_a_send_from_psql_starts_a_run_that_completes(app: Durable, dsn: str) -> None:
    @app.function(id="total", event="order/created")
    def total(ctx: Context) -> int:
        return int(ctx.step.run("double", lambda: ctx.event.data["order_id"] * 2))

    app.start(threads=1)
    out = subprocess.run(
        ["psql", dsn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c",
         f"""SELECT {app.schema}.send('order/created', '{{"order_id": 7}}')"""],
        capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    wait_until(lambda: [r.status for r in app.runs_for_event(out)] == ["completed"],
               what="the run of the event psql sent")
    [run] = app.runs_for_event(out)
    assert app.wait_for_run(run.id, timeout=5).output == 14


def test_a_send_fans_out_with_id_and_delay_as_app_send_does(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    for fid in ("b-second", "a-first"):
        app.function(id=fid, event="order/created")(lambda ctx: None)
    app.function(id="elsewhere", event="other")(lambda ctx: None)
    registered(app)
    at = datetime.now(UTC) + timedelta(hours=1)
    sql = f"SELECT {app.schema}.send('order/created', %s::jsonb, id => %s, ts => %s)"
    assert db.execute(sql, ('{"n": 1}', "o-7", at)).fetchone() == ("o-7",)
    assert db.execute(sql, ('{"n": 2}', "o-7", at)).fetchone() == ("o-7",)  # a duplicate
    runs = runs_of(db, app.schema, "o-7")
    assert [(fid, due) for fid, due, _ in runs] == [("a-first", at), ("b-second", at)]
    assert app.get_event("o-7") == Event("order/created", {"n": 1}, "o-7", at)
    [ids] = db.execute(f"SELECT {app.schema}.send_batch(%s::jsonb)", (json.dumps(
        [{"name": "other", "data": {}}, {"name": "nobody/listens"}]),)).fetchone()
    assert [f for f, _, _ in runs_of(db, app.schema, ids[0])] == ["elsewhere"]
    assert runs_of(db, app.schema, ids[1]) == [] and app.get_event(ids[1]) is not None


def test_flow_keys_and_admission_resolve_in_sql_as_in_python(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    app.function(id="keyed", event="k", concurrency=Concurrency(2, key="event.data.user"),
                 priority=Priority(run="data.boost"))(lambda ctx: None)
    app.function(id="once", event="k", idempotency="data.user",
                 rate_limit=RateLimit(1, "1h", key="data.user"))(lambda ctx: None)
    registered(app)
    user = {"name": "Zoë", "tags": ["a", 1.5, 10.0], "n": 7}
    sent = [db.execute(f"SELECT {app.schema}.send('k', %s::jsonb)",
                       (json.dumps({"user": user, "boost": 30}),)).fetchone()[0] for _ in range(2)]
    [(fid, due, slots)] = runs_of(db, app.schema, sent[1])  # `once` admitted the first only
    [_, first_once] = runs_of(db, app.schema, sent[0])
    key = key_of("data.user", Event("k", {"user": user}), what="key")
    assert fid == "keyed" and slots == [f"keyed {key}"] and first_once[0] == "once"
    assert due < datetime.now(UTC) - timedelta(seconds=20)  # moved ahead by its priority
    [(stored,)] = db.execute(f"SELECT key FROM {app.schema}.run_keys").fetchall()
    assert stored.endswith(key)


@pytest.mark.parametrize("value", [
    "plain", "Zoë 😀", 'quote " backslash \\ tab \t nl \n del \x7f', 0, -3, 1.5, 10.0, 1e-7,
    2.5e-5, 2.5e20, 1e16, True, False, [], {}, {"b": 1, "a": [1, {"é": None}], "A": 2.0}, 123456789012,
])
def test_sql_spells_keys_as_python_does(db: psycopg.Connection[Any], app: Durable, value: Any) -> None:
    """Keys are computed in SQL for sends and in Python for invoked
    children: a concurrency or idempotency key must read the same."""
    [(spelled,)] = db.execute(f"SELECT {app.schema}.json_key(%s::jsonb)",
                              (serde.dumps(value, what="a key"),)).fetchall()  # as app.send writes it
    assert spelled == key_of("data.v", Event("e", {"v": value}), what="key")


def test_a_library_older_than_the_schema_still_sends_the_runs_it_resolved(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    """During a rolling deploy, senders of the last version pass the runs
    they worked out themselves, as an array: taken as they are."""
    runs = [[1, "plain", 2], [1, "keyed", 0, {"slots": [{"key": "keyed 7", "limit": 1}]}]]
    db.execute(f"SELECT {app.schema}.send_events(%s::jsonb, %s::jsonb, '1 day')",
               ('[["old-1", "e", {"n": 7}, null]]', json.dumps(runs)))
    assert [(f, slots) for f, _, slots in runs_of(db, app.schema, "old-1")] == [
        ("keyed", ["keyed 7"]), ("plain", None)]


def test_a_function_no_worker_has_recorded_starts_nothing_until_one_has(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    app.function(id="late", event="e")(lambda ctx: None)
    [(before,)] = db.execute(f"SELECT {app.schema}.send('e')").fetchall()
    assert runs_of(db, app.schema, before) == []
    registered(app)
    [(after,)] = db.execute(f"SELECT {app.schema}.send('e')").fetchall()
    assert [f for f, _, _ in runs_of(db, app.schema, after)] == ["late"]
    assert runs_of(db, app.schema, before) == []  # registered later: not for earlier events


def test_a_key_computed_by_a_python_callable_is_refused_from_sql_and_works_from_python(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    app.function(id="by-callable", event="e", idempotency=lambda event: event.data["n"] % 2)(
        lambda ctx: None)
    registered(app)
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match="computed by a Python callable") as refused:
        db.execute(f"SELECT {app.schema}.send('e', '{{\"n\": 1}}')")
    assert refused.value.diag.message_hint is not None and "dotted path" in refused.value.diag.message_hint
    assert count(db, app.schema, "events") == 0
    ids = [app.send("e", {"n": n})[0] for n in (1, 3, 2)]
    assert [len(app.runs_for_event(i)) for i in ids] == [1, 0, 1]  # 1 and 3 share a key


@pytest.mark.parametrize(("events", "message"), [
    ([{"name": "", "data": {}}], "event name must not be empty"),
    ([{"name": 5}], "event name must be a string, not number"),
    ([{"name": "x" * 300}], "longer than 256 characters"),
    ([{"name": "e", "data": [1]}], "data of event 'e' must be a JSON object, not array"),
    ([{"name": "e", "payload": {}}], "event 'e' has unknown fields 'payload'"),
    ([{"name": "e", "id": "pgdurable:x"}], "reserved for the ids pgdurable generates"),
    ([{"name": "e", "id": ""}], "must be a non-empty string"),
    ([{"name": "e", "ts": "soon"}], "ts of event 'e' is not a timestamp"),
    ([{"name": "e"}, "e"], "an event must be a JSON object"),
    ({"name": "e"}, "events must be a JSON array"),
    ([{"name": "keyed", "data": {}}], "no value at 'data.user'"),
    ([{"name": "e", "data": {"big": "x" * 2000}}], "over the limit of 1,?000 bytes"),
])
def test_bad_input_from_sql_is_refused_before_anything_is_written(
    make_app: Any, db: psycopg.Connection[Any], events: Any, message: str
) -> None:
    app = make_app(max_event_bytes=1000)
    app.migrate()
    app.function(id="keyed", event="keyed", concurrency=Concurrency(1, key="data.user"))(
        lambda ctx: None)
    registered(app)
    with pytest.raises(psycopg.Error, match=message) as refused:
        db.execute(f"SELECT {app.schema}.send_batch(%s::jsonb)",
                   (json.dumps([{"name": "fine"}, *events] if isinstance(events, list) else events),))
    assert refused.value.sqlstate in ("22023", "54000")
    assert (count(db, app.schema, "events"), count(db, app.schema, "runs")) == (0, 0)


def test_app_send_takes_the_same_refusals_as_its_own_errors(app: Durable) -> None:
    app.function(id="keyed", event="keyed", concurrency=Concurrency(1, key="data.user"))(
        lambda ctx: None)
    with pytest.raises(InvalidEventError, match=r"event 'keyed' \(id .*\): concurrency key of "
                                                r"function 'keyed': .*no value at 'data.user'"):
        app.send("keyed", {})


# -- event triggers -------------------------------------------------------------


@pytest.fixture
def orders(app: Durable, db: psycopg.Connection[Any]) -> str:
    table = f"{app.schema}.orders"
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, total numeric NOT NULL, "
               f"status text NOT NULL DEFAULT 'new', secret text)")
    return table


def events_named(db: psycopg.Connection[Any], schema: str, name: str) -> list[dict[str, Any]]:
    return [row[0] for row in db.execute(
        f"SELECT data FROM {schema}.events WHERE name = %s ORDER BY received_at, id", (name,))]


def test_an_insert_trigger_starts_a_run_per_row_in_the_writer_s_transaction(
    app: Durable, db: psycopg.Connection[Any], orders: str
) -> None:
    @app.function(id="on-order", event="order/created")
    def on_order(ctx: Context) -> Any:
        return ctx.event.data["new"]["total"]

    app.create_event_trigger(orders, "order/created", columns=["id", "total"])
    app.start(threads=2)
    with psycopg.connect(db.info.dsn) as writer:
        writer.execute(f"INSERT INTO {orders} (id, total, secret) VALUES (1, 10.5, 's'), (2, 4, 's')")
        writer.rollback()  # a write that does not commit sends nothing
        writer.execute(f"INSERT INTO {orders} (id, total, secret) VALUES (3, 7, 's'), (4, 2, 's')")
        assert events_named(db, app.schema, "order/created") == []  # not before the commit
        writer.commit()
    sent = events_named(db, app.schema, "order/created")
    assert sent == [{"op": "insert", "table": f"{app.schema}.orders", "new": {"id": i, "total": t}}
                    for i, t in ((3, 7), (4, 2))]
    wait_until(lambda: sorted(r.output for r in app.list_runs(function="on-order")
                              if r.status == "completed") == [2, 7], what="both runs")


def test_an_update_trigger_with_a_condition_sends_old_and_new_rows_that_match(
    app: Durable, db: psycopg.Connection[Any], orders: str
) -> None:
    app.function(id="on-paid", event="order/paid")(lambda ctx: None)
    registered(app)
    app.create_event_trigger(orders, "order/paid", ops=["update"], columns=["id", "status"],
                             condition="OLD.status IS DISTINCT FROM 'paid' AND NEW.status = 'paid'")
    app.create_event_trigger(orders, "order/changed", ops=["insert", "delete"])
    db.execute(f"INSERT INTO {orders} (id, total) VALUES (1, 1), (2, 2), (3, 3)")
    db.execute(f"UPDATE {orders} SET status = 'paid' WHERE id IN (1, 2)")
    db.execute(f"UPDATE {orders} SET total = 9")  # no row becomes paid
    sent = events_named(db, app.schema, "order/paid")
    assert sorted(sent, key=lambda e: e["new"]["id"]) == [
        {"op": "update", "table": orders, "old": {"id": i, "status": "new"},
         "new": {"id": i, "status": "paid"}} for i in (1, 2)]
    assert count(db, app.schema, "queue") == 2
    listed = {(t.table, t.event, t.op, t.condition) for t in app.list_event_triggers()}
    assert listed == {
        (orders, "order/paid", "update",
         "((old.status IS DISTINCT FROM 'paid'::text) AND (new.status = 'paid'::text))"),
        (orders, "order/changed", "insert", None), (orders, "order/changed", "delete", None)}
    app.drop_event_trigger(orders, "order/paid")
    db.execute(f"UPDATE {orders} SET status = 'paid' WHERE id = 3")
    assert len(events_named(db, app.schema, "order/paid")) == 2
    assert {t.event for t in app.list_event_triggers()} == {"order/changed"}


def test_a_delete_trigger_sends_the_old_rows_once_per_statement(
    app: Durable, db: psycopg.Connection[Any], orders: str
) -> None:
    app.create_event_trigger(orders, "order/gone", ops=["delete"], condition="old.total > 1")
    db.execute(f"INSERT INTO {orders} (id, total) SELECT g, g FROM generate_series(1, 50) g")
    db.execute(f"DELETE FROM {orders}")
    sent = events_named(db, app.schema, "order/gone")
    assert sorted(e["old"]["id"] for e in sent) == list(range(2, 51))
    assert {e["old"]["secret"] for e in sent} == {None}  # every column by default


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ops": ["upsert"]}, "ops= takes one or more of insert, update, delete"),
    ({"columns": ["nope"]}, "has no column 'nope'"),
    ({"condition": "NEW.nope > 1"}, 'column new.nope does not exist|column "nope"'),
    ({"condition": "NEW.total >"}, "syntax error"),
])
def test_a_bad_trigger_definition_is_refused_and_leaves_no_trigger(
    app: Durable, orders: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.create_event_trigger(orders, "order/created", **kwargs)
    with pytest.raises(ConfigurationError, match=r"no table 'public\.missing'"):
        app.create_event_trigger("public.missing", "order/created")
    with pytest.raises(InvalidEventError, match="must not be empty"):
        app.create_event_trigger(orders, " ")
    assert app.list_event_triggers() == []


def test_a_trigger_made_in_a_migration_s_transaction_goes_with_its_rollback(
    app: Durable, db: psycopg.Connection[Any], orders: str
) -> None:
    with psycopg.connect(db.info.dsn) as migration:
        app.create_event_trigger(orders, "order/created", conn=migration)
        assert len(app.list_event_triggers()) == 0  # not committed yet
        migration.rollback()
    assert app.list_event_triggers() == []
    db.execute(f"SELECT {app.schema}.create_event_trigger(%s, 'order/created')", (orders,))
    assert [t.op for t in app.list_event_triggers()] == ["insert"]


def test_doctor_names_what_sends_from_sql_do_not_know_yet(
    app: Durable, db: psycopg.Connection[Any], orders: str
) -> None:
    def sql_sends() -> Any:
        [check] = [c for c in app.doctor() if c.name == "sends from SQL"]
        return check

    app.function(id="unrecorded", event="order/created")(lambda ctx: None)
    app.create_event_trigger(orders, "nobody/handles")
    check = sql_sends()
    assert check.verdict == "warning" and "no worker has recorded unrecorded" in check.found
    assert "event triggers send nobody/handles" in check.found
    registered(app)
    app.drop_event_trigger(orders, "nobody/handles")
    app.create_event_trigger(orders, "order/created")
    assert sql_sends().verdict == "ok"
    db.execute(f"UPDATE {app.schema}.function_registry SET send_spec = NULL")  # an older worker's
    assert "unrecorded were recorded by older workers" in sql_sends().found
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="too old"):
        db.execute(f"INSERT INTO {orders} (id, total) VALUES (1, 1)")


def test_concurrent_sql_sends_and_trigger_writes_keep_every_invariant(
    monkeypatch: pytest.MonkeyPatch, dsn: str, app: Durable
) -> None:
    """bench/probe_sql_send.py, short: 3 writers, 300 moves, in threads."""
    monkeypatch.syspath_prepend(str(BENCH))  # the probe imports bench/common.py
    import common  # type: ignore[import-not-found]

    monkeypatch.setattr(common, "DSN", dsn)  # the suite's server, not the bench's
    found = load_bench("probe_sql_send").probe(app, runs=300, workers=3, seed=7, processes=False)
    rows, committed = found.pop("row events, committed rows")
    assert rows == committed > 0
    assert set(found.values()) == {0}, found
