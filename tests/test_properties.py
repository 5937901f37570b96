"""Property tests: whatever names, ids, payloads and keys users send, each is
stored and returned intact, or refused with an error that names the problem.
Nothing reaches the database as SQL text but validated identifiers."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgdurable import ConfigurationError, Context, Durable, InvalidEventError
from pgdurable._serde import MAX_DEPTH
from pgdurable.testing import internals

SQL_FRAGMENTS = ["'; DROP TABLE events; --", '"; DELETE FROM queue; --', "$$ || pg_sleep(5) $$",
                 "\\x00", "%s %(name)s {schema}", "1) OR (1=1", "ü🙂\u202e", "\ufeff"]
texts = st.one_of(st.text(max_size=40), st.sampled_from(SQL_FRAGMENTS))
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts,
                   st.integers(min_value=-(10**80), max_value=10**80))
json_values = st.recursive(
    leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                    st.dictionaries(texts, inner, max_size=4)),
    max_leaves=25)
payloads = st.dictionaries(texts, json_values, max_size=5)
names = st.one_of(texts, st.text(min_size=250, max_size=260), st.sampled_from(["", " ", "a\x00b"]))
ids = st.one_of(st.none(), texts, st.text(min_size=250, max_size=260),
                st.just("pgdurable:0/step/0"))
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def problems(name: str, data: Any, event_id: str | None) -> set[str]:
    """What `send` must refuse in this event: the oracle, written independently."""
    found = set()
    if not name.strip() or len(name) > 256 or "\x00" in name:
        found.add("name")
    if event_id is not None and (not event_id or len(event_id) > 256 or "\x00" in event_id
                                 or event_id.startswith("pgdurable:")):
        found.add("id")

    def walk(value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            found.add("non-finite")
        elif isinstance(value, str) and "\x00" in value:
            found.add("NUL")
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)

    walk(data)
    return found


@pytest.fixture
def fresh(make_app: Any) -> Durable:
    app: Durable = make_app(dedupe_window=timedelta(microseconds=1))
    app.migrate()
    return app


def forget(app: Durable, event_id: str | None) -> None:
    """Examples may repeat an id, and a stored event is never rewritten:
    each example starts with its id unused."""
    with app.connection() as conn:
        conn.execute(f"DELETE FROM {app.schema}.events WHERE id = %s", (event_id,))


@FAST
@given(name=names, data=payloads, event_id=ids)
def test_any_event_is_stored_intact_or_refused_by_name(
    fresh: Durable, name: str, data: dict[str, Any], event_id: str | None
) -> None:
    expected = problems(name, data, event_id)
    if event_id is not None and "id" not in expected:
        forget(fresh, event_id)
    try:
        [sent] = fresh.send(name, data, id=event_id)
    except InvalidEventError as exc:
        assert expected, f"refused a valid event: {exc}"
        message = str(exc)
        assert ("name" in message and "name" in expected) or ("id" in message and "id" in expected) \
            or ("NUL" in message and "NUL" in expected) \
            or ("NaN or Infinity" in message and "non-finite" in expected), message
        return
    assert not expected, f"stored an event that has {expected}"
    stored = fresh.get_event(sent)
    assert stored is not None
    assert (stored.name, stored.id, stored.data) == (name, event_id or sent, data)
    assert _types(stored.data) == _types(data)  # a float stays a float, an int an int


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(min_value=0, max_value=400))
def test_deep_nesting_is_stored_or_refused_as_too_deep(fresh: Durable, depth: int) -> None:
    value = nested(depth)
    try:
        [sent] = fresh.send("deep", {"v": value})
    except InvalidEventError as exc:
        assert depth + 1 > MAX_DEPTH and "depth" in str(exc)  # data is one level itself
        return
    stored = fresh.get_event(sent)
    assert stored is not None and stored.data == {"v": value}


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def test_the_deepest_value_allowed_goes_through_a_run_and_its_journal(app: Durable) -> None:
    failed: list[bool] = []

    @app.function(id="deep", event="deep", retries=1)
    def deep(ctx: Context) -> bool:
        echoed = ctx.step.run("echo", lambda: ctx.event.data["v"])
        if not failed:
            failed.append(True)
            raise RuntimeError("once more: the step's value comes from the journal")
        return bool(echoed == ctx.event.data["v"])

    [sent] = app.send("deep", {"v": nested(MAX_DEPTH - 1)})
    [run] = app.runs_for_event(sent)
    app.start(threads=1)
    assert app.wait_for_run(run.id, 30).output is True
    with pytest.raises(InvalidEventError, match="nesting depth"):
        app.send("deep", {"v": nested(MAX_DEPTH)})


@FAST
@given(key=st.one_of(texts.filter(lambda t: "\x00" not in t), st.integers(), st.booleans()))
def test_any_key_value_keeps_its_idempotency(app: Durable, key: Any) -> None:
    fid = f"once-{len(internals(app).functions)}"  # a new function per example: its own keys
    app.function(id=fid, event=f"order/{fid}", idempotency="data.k")(lambda ctx: None)
    first, again = (app.send(f"order/{fid}", {"k": key})[0] for _ in range(2))
    assert len(app.runs_for_event(first)) == 1
    assert app.runs_for_event(again) == []


@given(schema=st.text(max_size=60))
def test_a_schema_name_is_a_valid_identifier_or_refused(schema: str) -> None:
    try:
        Durable("postgresql://nowhere.invalid/db", schema=schema)
    except ConfigurationError as exc:
        assert "schema" in str(exc)
        return
    assert schema.isascii() and schema.replace("_", "a").isalnum() and not schema[0].isdigit()


@given(function_id=texts)
def test_a_function_id_is_registered_as_given_or_refused(function_id: str) -> None:
    app = Durable("postgresql://nowhere.invalid/db")
    try:
        app.function(id=function_id, event="e")(lambda ctx: None)
    except ConfigurationError as exc:
        assert "id" in str(exc)
        return
    assert list(internals(app).functions) == [function_id]
