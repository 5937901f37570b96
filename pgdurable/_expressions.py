"""Event filters of `wait_for_event` and `cancel_on`: `match=` paths and
`if_=` expressions.

An `if_` expression compares fields of the awaited event (`async.data.x`),
fields of the run's triggering event (`event.data.x`) and literals:

    async.data.user_id == event.data.user_id && async.data.amount >= 100

Operators: `==  !=  <  <=  >  >=`, combined with `&&`/`and`, `||`/`or` and
parentheses. It compiles to a Postgres jsonpath predicate, evaluated in SQL
against each incoming event. Only validated field names reach the jsonpath
text; every value (literals, and the triggering event's fields, known when
the step starts waiting) is passed as a jsonpath variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<op>==|!=|<=|>=|<|>|&&|\|\||\(|\))
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>-?[0-9][0-9.eE+-]*)
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""", re.VERBOSE)
_COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}
_KEYWORDS = {"true": True, "false": False, "null": None}


def field_path(path: object, *, what: str) -> list[str]:
    """Split a dotted path such as "data.user_id" into validated field names."""
    parts = path.split(".") if isinstance(path, str) else []
    if not parts or not all(_IDENT.fullmatch(p) for p in parts):
        raise ConfigurationError(
            f"{what} {path!r} is not a dotted field path such as 'data.user_id'")
    return parts


def lookup(doc: Mapping[str, Any], parts: list[str], *, what: str) -> Any:
    """The value at `parts` in `doc`; a missing or null field is an error."""
    value: Any = doc
    for part in parts:
        if not isinstance(value, Mapping) or value.get(part) is None:
            raise ConfigurationError(
                f"{what}: the triggering event has no value at {'.'.join(parts)!r}")
        value = value[part]
    return value


@dataclass
class Condition:
    """A compiled `if_` expression: jsonpath text and its variables."""

    jsonpath: str
    variables: dict[str, Any] = field(default_factory=dict)


def compile_condition(expression: object, trigger: Mapping[str, Any] | None) -> Condition:
    """Compile an `if_` expression against the triggering event document;
    without one, each `event.<field>` becomes a variable {"event": path},
    for SQL to fill in from the event (cancel_listener)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(f"if_ must be a non-empty expression string, not {expression!r}")
    parser = _Parser(expression, trigger)
    text = parser.parse_or()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.peek()!r}")
    return Condition(text, parser.variables)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a listener accepts: the field at `path` equal to `value`
    (no path: any), and `condition` if given."""

    path: list[str]
    value: Any
    condition: Condition | None


def event_filter(
    match: str | None, if_: str | None, trigger: Mapping[str, Any], *, what: str
) -> Filter:
    """Compile `match=` and `if_=` against the triggering event document."""
    path, value = [], None
    if match is not None:
        path = field_path(match, what=f"{what} match")
        value = lookup(trigger, path, what=f"{what} match={match!r}")
    condition = None if if_ is None else compile_condition(if_, trigger)
    return Filter(path, value, condition)


def check_key(key: object, *, what: str) -> None:
    """Validate a key option: None, a callable of the event, or a dotted path
    into it such as "event.data.user_id" (the "event." prefix is optional)."""
    if key is None or callable(key):
        return
    if not isinstance(key, str):
        raise ConfigurationError(f"{what} must be a dotted path or a callable, not {key!r}")
    field_path(key.removeprefix("event."), what=what)


def value_of(key: object, event: Any, *, what: str) -> Any:
    """The value a key option (a callable or a dotted path) gives for an event."""
    if callable(key):
        return key(event)
    assert isinstance(key, str)
    return lookup(event.to_doc(), field_path(key.removeprefix("event."), what=what), what=what)


def key_of(key: object, event: Any, *, what: str) -> str:
    """An event's key value, as JSON text ("" when there is no key)."""
    if key is None:
        return ""
    value = value_of(key, event, what=what)
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what}: the key value {value!r} is not JSON") from exc


class _Parser:
    def __init__(self, expression: str, trigger: Mapping[str, Any] | None) -> None:
        self.expression = expression
        self.trigger = trigger
        self.tokens = list(self._tokenize())
        self.index = 0
        self.variables: dict[str, Any] = {}

    def _tokenize(self) -> Iterator[str]:
        position, text = 0, self.expression
        while position < len(text.rstrip()):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                self.fail(f"cannot read {text[position:].strip()[:20]!r}")
            assert match is not None
            yield match.group().strip()
            position = match.end()

    def fail(self, reason: str) -> None:
        raise ConfigurationError(f"if_ expression {self.expression!r}: {reason}")

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            self.fail("ends too early")
        self.index += 1
        return token  # type: ignore[return-value]

    def parse_or(self) -> str:
        return self._chain(("||", "or"), " || ", self.parse_and)

    def parse_and(self) -> str:
        return self._chain(("&&", "and"), " && ", self.parse_comparison)

    def _chain(self, words: tuple[str, str], joiner: str, operand: Callable[[], str]) -> str:
        """operand (word operand)*, as one parenthesised jsonpath term."""
        parts = [operand()]
        while self.peek() in words:
            self.take()
            parts.append(operand())
        return parts[0] if len(parts) == 1 else "(" + joiner.join(parts) + ")"

    def parse_comparison(self) -> str:
        if self.peek() == "(":
            self.take()
            inner = self.parse_or()
            if self.peek() != ")":
                self.fail("a '(' is not closed")
            self.take()
            return inner
        left = self.operand()
        op = self.take()
        if op not in _COMPARISONS:
            self.fail(f"expected a comparison (== != < <= > >=) after {left!r}, got {op!r}")
        return f"({left} {op} {self.operand()})"

    def operand(self) -> str:
        token = self.take()
        if token[0] in "\"'":
            return self.variable(self.json_literal(_string(token), "a string", token))
        if token in _KEYWORDS:
            return self.variable(_KEYWORDS[token])
        if token[0].isdigit() or token[0] == "-":
            if not _NUMBER.fullmatch(token):
                self.fail(f"{token!r} is not a number")
            return self.variable(json.loads(token))
        root, _, rest = token.partition(".")
        if root == "async" and rest:
            return "$" + "".join(f'."{p}"' for p in field_path(rest, what="field"))
        if root == "event" and rest:
            parts = field_path(rest, what="field")
            if self.trigger is None:
                return self.variable({"event": parts})
            return self.variable(lookup(self.trigger, parts, what=f"if_ {self.expression!r}"))
        self.fail(f"{token!r} is not a literal, async.<field> or event.<field>")
        return ""

    def json_literal(self, text: str, kind: str, token: str) -> Any:
        """The value of a literal written as JSON `text`; a clear error if it is not."""
        try:
            return json.loads(text)
        except ValueError:
            self.fail(f"{token!r} is not {kind}")

    def variable(self, value: Any) -> str:
        name = f"v{len(self.variables)}"
        self.variables[name] = value
        return f"${name}"


def _string(token: str) -> str:
    """A quoted literal as JSON string text: a single-quoted one has its
    quotes swapped, escape by escape, so that a backslash escaping a
    backslash is never read as escaping the quote after it."""
    body = token[1:-1]
    if token[0] == "'":
        body = _ESCAPE.sub(lambda m: {"\\'": "'", '"': '\\"'}.get(m[0], m[0]), body)
    return f'"{body}"'


_ESCAPE = re.compile(r'\\.|"', re.DOTALL)  # an escape sequence, or a bare double quote
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")  # JSON's
