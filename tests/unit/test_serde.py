"""JSON in and out of the journal (_serde.py): what is refused, by name, and
what comes back as its annotated type. No database."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from pgdurable import SerializationError
from pgdurable._serde import MAX_DEPTH, dumps, loads, revive


class Total(BaseModel):
    amount: float
    at: datetime


@dataclass
class Point:
    x: int


@pytest.mark.parametrize(("value", "problem"), [
    (object(), "is not JSON-serializable"),
    (math.nan, "NaN or Infinity"),
    ({"x": [math.inf]}, "NaN or Infinity"),
    ("a\x00b", "NUL character"),
    ("x" * 100, "over the limit of 50 bytes"),
])
def test_values_jsonb_cannot_hold_are_refused_by_name(value: Any, problem: str) -> None:
    with pytest.raises(SerializationError, match=f"^the value .*{problem}"):
        dumps(value, what="the value", limit=50)


def test_too_deep_a_value_is_refused_and_the_deepest_allowed_is_kept() -> None:
    with pytest.raises(SerializationError, match="nesting depth over"):
        dumps(_deep(MAX_DEPTH + 1), what="the value")
    assert loads(dumps(_deep(MAX_DEPTH), what="the value")) == _deep(MAX_DEPTH)


def _deep(depth: int) -> Any:
    """`depth` lists within each other."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_a_backslash_before_u0000_is_text_not_a_nul() -> None:
    assert loads(dumps("a\\u0000b", what="text")) == "a\\u0000b"


def test_big_floats_are_written_positionally() -> None:
    assert "e+" not in dumps({"n": 1e300}, what="n")
    assert loads(dumps({"n": 1e300}, what="n")) == {"n": 1e300}


def test_annotated_return_types_come_back_as_themselves() -> None:
    def total() -> Total: ...
    def point() -> Point: ...
    def untyped():  # type: ignore[no-untyped-def]
        ...

    at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert revive(total, loads(dumps(Total(amount=1.5, at=at), what="t"))) == Total(amount=1.5, at=at)
    assert revive(point, loads(dumps(Point(3), what="p"))) == Point(3)
    assert revive(untyped, {"x": 1}) == {"x": 1}
    assert revive(lambda: None, [1]) == [1]
