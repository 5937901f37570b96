"""Event filters (_expressions.py): `match=` paths, `if_=` expressions
compiled to jsonpath with every value a variable, and key options. No database."""

from __future__ import annotations

from typing import Any

import pytest

from pgdurable import ConfigurationError, Event
from pgdurable._expressions import compile_condition, event_filter, field_path, key_of

TRIGGER = {"name": "order/created", "data": {"user": 7, "region": "eu"}}


@pytest.mark.parametrize(("expression", "problem"), [
    ("""async.x == 'a\\\\"b' """, None),  # an escaped backslash, then a quote: fine
    ("async.x == 01", "'01' is not a number"),
    ("async.x == 1.2.3", "'1.2.3' is not a number"),
    ("async.x == \u0661", "cannot read"),  # an Arabic-Indic digit
    ("async.x == '\\q'", "is not a string"),
])
def test_if_literals_are_read_or_refused_by_name(expression: str, problem: str | None) -> None:
    if problem is None:
        assert compile_condition(expression, {}).variables == {"v0": 'a\\"b'}
        return
    with pytest.raises(ConfigurationError, match=problem):
        compile_condition(expression, {})
def test_values_reach_the_jsonpath_only_as_variables() -> None:
    condition = compile_condition(
        "async.data.user == event.data.user && (async.data.total >= 100 or async.data.vip == true)",
        TRIGGER)
    assert "7" not in condition.jsonpath and "100" not in condition.jsonpath
    assert sorted(condition.variables.values(), key=str) == sorted([7, 100, True], key=str)


@pytest.mark.parametrize(("expression", "problem"), [
    ("", "non-empty expression"),
    ("async.data.x ==", "cannot read|expected|end"),
    ("async.data.x == 1 )", "unexpected"),
    ("event.data.missing == 1", "no value at 'data.missing'"),
    ("async.data.x; DROP TABLE runs", "cannot read|unexpected"),
])
def test_bad_expressions_are_refused_by_name(expression: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        compile_condition(expression, TRIGGER)


@pytest.mark.parametrize("path", ["", "data.", ".data", "data..x", "data.x-y", "data.1x", 3])
def test_match_paths_are_dotted_identifiers(path: Any) -> None:
    with pytest.raises(ConfigurationError, match="not a dotted field path"):
        field_path(path, what="match")


def test_a_match_takes_its_value_from_the_triggering_event() -> None:
    found = event_filter("data.user", None, TRIGGER, what="wait")
    assert (found.path, found.value, found.condition) == (["data", "user"], 7, None)


def test_key_values_are_canonical_json() -> None:
    event = Event("e", {"k": {"b": 1, "a": [1, 2]}})
    assert key_of("data.k", event, what="key") == key_of(lambda e: {"a": [1, 2], "b": 1}, event, what="k")
    assert key_of(None, event, what="key") == ""
    with pytest.raises(ConfigurationError, match="is not JSON"):
        key_of(lambda e: object(), event, what="key")
