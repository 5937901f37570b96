"""JSON serialization of event data and step values.

Every value that crosses the journal goes through `dumps` then `loads`, on
first execution as on replay, so a step returns the same value either way.
pydantic models, dataclasses, datetimes, UUIDs and the like are encoded by
pydantic-core; a return annotation on the step function turns the JSON back
into that type (see `revive`).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any

import pydantic_core
from pydantic import TypeAdapter

from .errors import SerializationError


def dumps(value: Any, *, what: str, limit: int | None = None) -> str:
    """Encode `value` as JSON text, checking what Postgres' jsonb refuses."""
    try:
        text = pydantic_core.to_json(value, inf_nan_mode="constants").decode()
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(f"{what} is not JSON-serializable: {exc}") from None
    if ("NaN" in text or "Infinity" in text) and _has_non_finite(text):
        raise SerializationError(f"{what} contains NaN or Infinity, which JSON cannot hold")
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise SerializationError(f"{what} contains a NUL character (\\u0000), which Postgres cannot store")
    if "e+" in text:
        text = _BIG_FLOAT_OR_STRING.sub(_positional, text)
    # Nesting n deep takes 2n characters: short values need no counting.
    if len(text) > 2 * MAX_DEPTH and text.count("[") + text.count("{") > MAX_DEPTH \
            and not _readable(text):
        raise SerializationError(f"{what} has a nesting depth over {MAX_DEPTH} (lists and objects "
                                 "within each other), too deep to be read back")
    if limit is not None and len(text) > limit:
        raise SerializationError(f"{what} is {len(text):,} bytes of JSON, over the limit of {limit:,} bytes")
    return text


# A JSON escape of NUL: `\\u0000` after an even number of backslashes (an odd
# number means the text holds a backslash, then "u0000": no NUL at all).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def printable(value: Any) -> Any:
    """`value` with the characters Postgres cannot store in text (NUL, and
    lone surrogates) replaced, in every string within it: for error
    documents, which must be written whatever a handler raised."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    return value


# The parser reads 201 levels of nesting; pgdurable wraps stored values in
# up to 8 levels of its own (event documents, journal entries, claim rows).
MAX_DEPTH = 193
_WRAPPING = 201 - MAX_DEPTH


def _readable(text: str) -> bool:
    """Whether `text`, wrapped as deep as pgdurable wraps values, still parses."""
    try:
        pydantic_core.from_json("[" * _WRAPPING + text + "]" * _WRAPPING)
    except ValueError:
        return False
    return True


# jsonb keeps a number's digits but not its notation: 1e+20 comes back as
# 100000000000000000000, an int. Written positionally with a fraction
# (100000000000000000000.0) it comes back a float, equal to the one sent.
# Strings are matched too, so that an "e+" inside one is left alone.
_BIG_FLOAT_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?e\+\d+')


def _positional(match: re.Match[str]) -> str:
    token = match[0]
    return token if token[0] == '"' else f"{Decimal(token):f}.0"


def _has_non_finite(text: str) -> bool:
    found: list[str] = []
    json.loads(text, parse_constant=found.append)
    return bool(found)


def loads(text: str | bytes) -> Any:
    """Parse JSON (pydantic-core's parser: several times faster than `json`)."""
    return pydantic_core.from_json(text)


@lru_cache(maxsize=1024)
def _adapter_for(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    try:
        annotation = inspect.signature(fn, eval_str=True).return_annotation
    except Exception:  # no signature, or a string annotation that does not resolve
        return None
    if annotation in (inspect.Signature.empty, None, Any):
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:  # an annotation pydantic cannot handle: keep plain JSON
        return None


def revive(fn: Callable[..., Any], value: Any) -> Any:
    """Turn a journaled JSON value back into `fn`'s annotated return type."""
    if "return" not in getattr(fn, "__annotations__", {"return": None}):
        return value  # the common case (lambdas, unannotated functions): no lookup
    try:
        adapter = _adapter_for(fn)
    except TypeError:  # unhashable callables are not cached: no annotation used
        return value
    return value if adapter is None else adapter.validate_python(value)
