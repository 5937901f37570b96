"""Function definitions: the decorator's options, validated at import time."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ._durations import parse_duration
from ._events import Event, PreparedEvent, check_name
from ._expressions import check_key, compile_condition, event_filter, field_path, key_of, value_of
from ._options import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    FunctionOptions,
    Key,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from ._retention import Retention, function_retention
from .errors import ConfigurationError, InvalidEventError

Handler = Callable[..., Any]
T = TypeVar("T")

_FUNCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")

MAX_BATCH_SIZE = 10_000
MAX_CONCURRENCY_CONSTRAINTS = 2  # as in Inngest: e.g. a global cap and a per-user cap
MAX_PRIORITY = 600  # seconds a priority moves a run ahead (or back), as in Inngest
CATCH_UP = ("none", "latest", "all")

DEFAULT_RETRIES = 3  # retries after the first attempt, as in Inngest


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron trigger: the expression, its IANA time zone, and what to do
    with ticks missed while no worker was up."""

    cron: str
    timezone: str = "UTC"
    catch_up: str = "none"


@dataclass(frozen=True, slots=True)
class FunctionDef:
    """A registered function: its id, triggers, retry budget, handler and options.

    `failure_of` is set on the function that runs a handler given as
    `on_failure=`: the id of the function whose failures it handles.
    """

    id: str
    handler: Handler
    events: tuple[str, ...]
    retries: int
    is_async: bool
    schedule: Schedule | None = None
    cancel_on: tuple[Cancel, ...] = ()
    start_timeout: timedelta | None = None
    finish_timeout: timedelta | None = None
    on_failure: Handler | None = None
    failure_of: str | None = None
    batch: Batch | None = None
    batch_timeout: timedelta | None = None
    idempotency: Key = None
    rate_limit: RateLimit | None = None
    rate_period: timedelta | None = None
    singleton: Singleton | None = None
    debounce: Debounce | None = None
    debounce_spec: tuple[float, float | None] | None = None  # period and timeout, in seconds
    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    throttle_period: timedelta | None = None
    priority: Priority | None = None
    retention: Retention | None = None  # over the app's

    @property
    def has_run_options(self) -> bool:
        """Whether sending its events needs more than (event, function, retries)."""
        return bool(self.cancel_on or self.concurrency) or any(
            x is not None
            for x in (self.batch, self.idempotency, self.rate_limit, self.singleton, self.debounce,
                      self.throttle, self.priority))


def define(
    handler: Handler, *, id: str, event: str | list[str] | tuple[str, ...] | None,
    retries: int, options: dict[str, Any],
) -> FunctionDef:
    """Validate a decorator call and build its FunctionDef."""
    if not isinstance(id, str) or not _FUNCTION_ID.fullmatch(id):
        raise ConfigurationError(
            f"function id {id!r} is invalid: 1-128 characters of letters, digits and . _ : / -, "
            "starting with a letter or digit"
        )
    options = {name: value for name, value in options.items() if value is not None}
    for name in sorted(set(options) - FunctionOptions.__optional_keys__):
        raise ConfigurationError(f"function {id!r}: unknown option {name}=")
    if not callable(handler):
        raise ConfigurationError(f"function {id!r}: the handler is not callable")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise ConfigurationError(f"function {id!r}: retries must be an int from 0 to 100, not {retries!r}")
    schedule = _schedule(id, options)
    timeouts = _timeouts(id, options.get("timeouts"))
    on_failure = options.get("on_failure")
    if on_failure is not None and not callable(on_failure):
        raise ConfigurationError(f"function {id!r}: on_failure must be a handler function")
    batch, batch_timeout = _batch(id, options)
    rate_limit, rate_period = _rate_limit(id, options.get("rate_limit"))
    check_key(options.get("idempotency"), what=f"idempotency key of function {id!r}")
    singleton = _singleton(id, options.get("singleton"))
    debounce, debounce_spec = _debounce(id, options.get("debounce"))
    throttle, throttle_period = _throttle(id, options.get("throttle"))
    if batch is not None and {"idempotency", "rate_limit", "singleton", "debounce"} & set(options):
        raise ConfigurationError(f"function {id!r}: batch= cannot go with idempotency=, "
                                 "rate_limit=, singleton= or debounce=")
    return FunctionDef(
        id=id,
        handler=handler,
        events=_triggers(id, event, required=schedule is None),
        retries=retries,
        is_async=inspect.iscoroutinefunction(handler),
        schedule=schedule,
        cancel_on=_cancel_on(id, options.get("cancel_on")),
        start_timeout=timeouts[0],
        finish_timeout=timeouts[1],
        on_failure=on_failure,
        batch=batch,
        batch_timeout=batch_timeout,
        idempotency=options.get("idempotency"),
        rate_limit=rate_limit,
        rate_period=rate_period,
        singleton=singleton,
        debounce=debounce,
        debounce_spec=debounce_spec,
        concurrency=_concurrency(id, options.get("concurrency")),
        throttle=throttle,
        throttle_period=throttle_period,
        priority=_priority(id, options.get("priority")),
        retention=function_retention(id, options.get("retention")),
    )


def failure_handler(fdef: FunctionDef) -> FunctionDef | None:
    """The function that runs `fdef`'s on_failure handler, if it has one."""
    if fdef.on_failure is None:
        return None
    return FunctionDef(
        id=f"{fdef.id}/on-failure", handler=fdef.on_failure, events=(), retries=fdef.retries,
        is_async=inspect.iscoroutinefunction(fdef.on_failure), failure_of=fdef.id,
        retention=fdef.retention,
    )


def _schedule(function_id: str, options: dict[str, Any]) -> Schedule | None:
    cron, timezone, catch_up = (options.get(k) for k in ("cron", "timezone", "catch_up"))
    if cron is None:
        if timezone is not None or catch_up is not None:
            raise ConfigurationError(f"function {function_id!r}: timezone= and catch_up= go with cron=")
        return None
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ConfigurationError(f"function {function_id!r}: cron={cron!r} is not a valid cron expression")
    timezone = timezone or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"function {function_id!r}: timezone={timezone!r} is not an IANA time zone") from exc
    catch_up = catch_up or "none"
    _one_of(function_id, "catch_up", catch_up, CATCH_UP)
    return Schedule(cron, timezone, catch_up)


def _batch(function_id: str, options: dict[str, Any]) -> tuple[Batch | None, timedelta | None]:
    batch = options.get("batch")
    if batch is None:
        return None, None
    batch = _expect(function_id, batch, Batch, "batch takes Batch(max_size=, timeout=, key=)")
    size = batch.max_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
        raise ConfigurationError(
            f"function {function_id!r}: Batch.max_size must be an int from 1 to {MAX_BATCH_SIZE:,}")
    if options.get("cancel_on") is not None or options.get("cron") is not None:
        raise ConfigurationError(f"function {function_id!r}: batch= cannot go with cancel_on= or cron=")
    check_key(batch.key, what=f"batch key of function {function_id!r}")
    return batch, parse_duration(batch.timeout, what=f"Batch.timeout of function {function_id!r}")


def _period(function_id: str, what: str, value: Any) -> timedelta:
    period = parse_duration(value, what=f"{what} of function {function_id!r}")
    if period <= timedelta(0):
        raise ConfigurationError(f"function {function_id!r}: {what} must be positive")
    return period


def _rate_limit(function_id: str, value: Any) -> tuple[RateLimit | None, timedelta | None]:
    if value is None:
        return None, None
    value = _expect(function_id, value, RateLimit, "rate_limit takes RateLimit(limit=, period=, key=)")
    _positive_int(function_id, "RateLimit.limit", value.limit)
    period = _period(function_id, "RateLimit.period", value.period)
    check_key(value.key, what=f"rate limit key of function {function_id!r}")
    return value, period


def _debounce(
    function_id: str, value: Any
) -> tuple[Debounce | None, tuple[float, float | None] | None]:
    if value is None:
        return None, None
    value = _expect(function_id, value, Debounce, "debounce takes Debounce(period=, key=, timeout=)")
    what = f"of function {function_id!r}"
    period = _period(function_id, "Debounce.period", value.period)
    timeout = None if value.timeout is None else parse_duration(
        value.timeout, what=f"Debounce.timeout {what}").total_seconds()
    check_key(value.key, what=f"debounce key {what}")
    return value, (period.total_seconds(), timeout)


def _expect(function_id: str, value: Any, kind: type[T], usage: str) -> T:
    """The option value, refused if of the wrong type, saying how the option is given."""
    if not isinstance(value, kind):
        raise ConfigurationError(f"function {function_id!r}: {usage}")
    return value


def _one_or_more(function_id: str, value: Any, kind: type[T], usage: str) -> list[T]:
    """An option given as one `kind` or a non-empty list of them."""
    items = [value] if isinstance(value, kind) else value if isinstance(value, list | tuple) else None
    if not items or not all(isinstance(item, kind) for item in items):
        raise ConfigurationError(f"function {function_id!r}: {usage}")
    return list(items)


def _one_of(function_id: str, what: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigurationError(
            f"function {function_id!r}: {what} must be one of {', '.join(choices)}, not {value!r}")


def _positive_int(function_id: str, what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"function {function_id!r}: {what} must be an int of at least 1")


def _concurrency(function_id: str, value: Any) -> tuple[Concurrency, ...]:
    if value is None:
        return ()
    items = _one_or_more(function_id, value, Concurrency, "concurrency takes Concurrency("
                         f"limit=, key=, scope=) or a list of up to {MAX_CONCURRENCY_CONSTRAINTS}")
    if len(items) > MAX_CONCURRENCY_CONSTRAINTS:
        raise ConfigurationError(
            f"function {function_id!r}: at most {MAX_CONCURRENCY_CONSTRAINTS} concurrency "
            f"constraints, not {len(items)}")
    for item in items:
        _positive_int(function_id, "Concurrency.limit", item.limit)
        _one_of(function_id, "Concurrency.scope", item.scope, ("function", "app"))
        check_key(item.key, what=f"concurrency key of function {function_id!r}")
    return tuple(items)


def _throttle(function_id: str, value: Any) -> tuple[Throttle | None, timedelta | None]:
    if value is None:
        return None, None
    value = _expect(function_id, value, Throttle, "throttle takes Throttle(limit=, period=, burst=, key=)")
    _positive_int(function_id, "Throttle.limit", value.limit)
    _positive_int(function_id, "Throttle.burst", value.burst)
    period = _period(function_id, "Throttle.period", value.period)
    check_key(value.key, what=f"throttle key of function {function_id!r}")
    return value, period


def _priority(function_id: str, value: Any) -> Priority | None:
    if value is None:
        return None
    if not isinstance(value, Priority) or value.run is None:
        raise ConfigurationError(f"function {function_id!r}: priority takes Priority(run=), where run "
                                 "is a dotted path to a number of seconds or a callable of the event")
    check_key(value.run, what=f"priority of function {function_id!r}")
    return value


def _singleton(function_id: str, value: Any) -> Singleton | None:
    if value is None:
        return None
    singleton = _expect(function_id, value, Singleton, "singleton takes Singleton(key=, mode=)")
    _one_of(function_id, "Singleton.mode", singleton.mode, ("skip", "cancel"))
    check_key(singleton.key, what=f"singleton key of function {function_id!r}")
    return singleton


def _cancel_on(function_id: str, value: Any) -> tuple[Cancel, ...]:
    if value is None:
        return ()
    items = _one_or_more(function_id, value, Cancel, "cancel_on takes a list of Cancel(...)")
    what = f"cancel_on of function {function_id!r}"
    for cancel in items:
        _event_name(cancel.event, what=f"event name in {what}")
        if cancel.match is not None:
            field_path(cancel.match, what=f"match in {what}")
        if cancel.if_ is not None:
            compile_condition(cancel.if_, None)
        if cancel.timeout is not None:
            parse_duration(cancel.timeout, what=f"timeout in {what}")
    return tuple(items)


def _timeouts(function_id: str, value: Any) -> tuple[timedelta | None, timedelta | None]:
    if value is None:
        return None, None
    value = _expect(function_id, value, Timeouts, "timeouts takes Timeouts(start=, finish=)")
    def limit(name: str, given: Any) -> timedelta | None:
        return None if given is None else parse_duration(
            given, what=f"timeouts.{name} of function {function_id!r}")

    return limit("start", value.start), limit("finish", value.finish)


def _triggers(
    function_id: str, event: str | list[str] | tuple[str, ...] | None, *, required: bool
) -> tuple[str, ...]:
    if event is None:
        if not required:
            return ()
        raise ConfigurationError(f"function {function_id!r} needs a trigger: event= or cron=")
    names = [event] if isinstance(event, str) else list(event)
    if not names:
        raise ConfigurationError(f"function {function_id!r}: event= is an empty list")
    for name in names:
        _event_name(name, what=f"event name of function {function_id!r}")
    return tuple(dict.fromkeys(names))


def _event_name(name: object, *, what: str) -> None:
    """An event name in a definition: a bad one is a ConfigurationError, at import."""
    try:
        check_name(name, what=what)
    except InvalidEventError as exc:
        raise ConfigurationError(str(exc)) from None


def _cancel_listeners(fdef: FunctionDef, trigger: dict[str, Any]) -> list[dict[str, Any]]:
    """What a run of `fdef` started one by one (invoked, replayed) with this
    triggering event listens for to be cancelled, one listener per Cancel,
    as cancel_listener (sql/functions/02_send.sql) writes it for a send."""
    now, specs = datetime.now(UTC), []
    for cancel in fdef.cancel_on:
        what = f"cancel_on of function {fdef.id!r}"
        found = event_filter(cancel.match, cancel.if_, trigger, what=what)
        condition = found.condition
        expires = None if cancel.timeout is None else now + parse_duration(cancel.timeout, what=what)
        specs.append({
            "event": cancel.event, "path": found.path, "value": found.value,
            "condition": condition.jsonpath if condition else None,
            "vars": condition.variables if condition else None,
            "expires": expires.isoformat() if expires else None,
        })
    return specs


@dataclass(frozen=True, slots=True)
class SendSpec:
    """How a function's runs start for an event, as SQL resolves a send
    (resolve_runs in sql/functions/02_send.sql): `doc` is its JSON; the
    keys that are Python callables are listed in `callables` (what they
    key, and the callable), since SQL cannot call them: a Python send
    computes their values per event (`computed`)."""

    doc: dict[str, Any]
    callables: tuple[tuple[str, Callable[[Any], Any]], ...]
    doc_json: str  # `doc` as JSON, made once: every send passes it

    def computed(self, event: Event) -> list[Any] | None:
        """The values of the callables for `event`, in order (None if none)."""
        if not self.callables:
            return None
        return [value_of(key, event, what=what) for what, key in self.callables]


def send_spec(fdef: FunctionDef) -> SendSpec:
    """The one encoder of a function's options for sends: SQL reads each by
    the names written here (resolve_runs lists them)."""
    callables: list[tuple[str, Callable[[Any], Any]]] = []

    def key(option: str, value: Key) -> dict[str, Any] | None:
        what = f"{option} key of function {fdef.id!r}"
        if value is None:
            return None
        if callable(value):
            callables.append((what, value))
            return {"callable": f"{value.__module__}.{value.__qualname__}", "n": len(callables) - 1}
        return {"path": field_path(value.removeprefix("event."), what=what)}

    options: dict[str, Any] = {}
    if fdef.cancel_on:
        options["cancel_on"] = [_cancel_spec(fdef, cancel) for cancel in fdef.cancel_on]
    if fdef.batch is not None and fdef.batch_timeout is not None:
        options["batch"] = {"key": key("batch", fdef.batch.key), "max_size": fdef.batch.max_size,
                            "timeout": fdef.batch_timeout.total_seconds()}
    if fdef.idempotency is not None:
        options["idempotency"] = key("idempotency", fdef.idempotency)
    if fdef.rate_limit is not None and fdef.rate_period is not None:
        options["rate_limit"] = {"key": key("rate limit", fdef.rate_limit.key),
                                 "limit": fdef.rate_limit.limit,
                                 "period": fdef.rate_period.total_seconds()}
    if fdef.debounce is not None and fdef.debounce_spec is not None:
        period, timeout = fdef.debounce_spec
        options["debounce"] = {"key": key("debounce", fdef.debounce.key), "period": period,
                               "timeout": timeout}
    if fdef.singleton is not None:
        options["singleton"] = {"key": key("singleton", fdef.singleton.key),
                                "mode": fdef.singleton.mode}
    if fdef.concurrency:
        options["concurrency"] = [{"key": key("concurrency", c.key), "limit": c.limit,
                                   "scope": c.scope} for c in fdef.concurrency]
    if fdef.throttle is not None and fdef.throttle_period is not None:
        options["throttle"] = {"key": key("throttle", fdef.throttle.key),
                               "limit": fdef.throttle.limit,
                               "period": fdef.throttle_period.total_seconds(),
                               "burst": fdef.throttle.burst}
    if fdef.priority is not None:
        options["priority"] = key("priority", fdef.priority.run)
    doc: dict[str, Any] = {"id": fdef.id, "retries": fdef.retries}
    if options:
        doc["options"] = options
    return SendSpec(doc, tuple(callables), json.dumps(doc))


def specs_json(specs: Mapping[str, Sequence[SendSpec]]) -> str:
    """The specs of the functions each event name triggers, as send_events takes them."""
    return "{" + ",".join(f"{json.dumps(name)}:[{','.join(spec.doc_json for spec in triggered)}]"
                          for name, triggered in specs.items()) + "}"


def with_computed_keys(event: PreparedEvent, specs: Sequence[SendSpec]) -> PreparedEvent:
    """`event`, with the values of the callable keys of the functions it
    triggers (`specs`), which SQL cannot compute."""
    if not any(spec.callables for spec in specs):
        return event
    doc = Event(event.name, json.loads(event.data_json), event.id, event.ts)
    try:
        computed = {spec.doc["id"]: spec.computed(doc) for spec in specs if spec.callables}
        keys_json = json.dumps(computed)
    except ConfigurationError as exc:
        raise InvalidEventError(f"event {event.name!r} (id {event.id}): {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(f"event {event.name!r} (id {event.id}): a key computed for it "
                                f"is not JSON: {exc}") from None
    return replace(event, keys_json=keys_json)


def _cancel_spec(fdef: FunctionDef, cancel: Cancel) -> dict[str, Any]:
    what = f"cancel_on of function {fdef.id!r}"
    timeout = None if cancel.timeout is None else parse_duration(cancel.timeout, what=what)
    condition = None
    if cancel.if_ is not None:
        compiled = compile_condition(cancel.if_, None)
        condition = {"text": cancel.if_, "jsonpath": compiled.jsonpath, "vars": compiled.variables}
    return {"event": cancel.event, "match": cancel.match, "if": condition,
            "timeout": None if timeout is None else timeout.total_seconds()}


def start_options(fdef: FunctionDef, event: Event) -> dict[str, Any]:
    """The options of a run of `fdef` started one by one for `event` (an
    invoked child, a replay): flow control and cancel_on listeners, as a
    sent event's run has them (admission is the send's alone)."""
    options = flow_options(fdef, event)
    if fdef.cancel_on:
        options["cancels"] = _cancel_listeners(fdef, event.to_doc())
    return options


def flow_options(fdef: FunctionDef, event: Event) -> dict[str, Any]:
    """The options a run of `fdef` for `event` is claimed under, however it
    starts: concurrency keys and limits, throttle, priority in seconds."""
    options: dict[str, Any] = {}
    if fdef.concurrency:
        options["slots"] = [{"key": _slot_key(fdef, c, event), "limit": c.limit}
                            for c in fdef.concurrency]
    if fdef.throttle is not None and fdef.throttle_period is not None:
        options["throttle"] = {"key": _key(fdef, "throttle", fdef.throttle.key, event),
                               "limit": fdef.throttle.limit,
                               "period": fdef.throttle_period.total_seconds(),
                               "burst": fdef.throttle.burst}
    if fdef.priority is not None:
        options["priority"] = _priority_seconds(fdef, event)
    return options


def _slot_key(fdef: FunctionDef, constraint: Concurrency, event: Event) -> str:
    """A concurrency key as stored: scoped to the function ('<id> <key>') or
    to the app ('* <key>'); neither a function id nor a key holds a space
    at that place, so scopes cannot collide."""
    key = _key(fdef, "concurrency", constraint.key, event)
    return f"{'*' if constraint.scope == 'app' else fdef.id} {key}"


def _key(fdef: FunctionDef, option: str, key: Key, event: Event) -> str:
    """The value of one of `fdef`'s option keys for `event`."""
    return key_of(key, event, what=f"{option} key of function {fdef.id!r}")


def _priority_seconds(fdef: FunctionDef, event: Event) -> float:
    assert fdef.priority is not None
    what = f"priority of function {fdef.id!r}"
    value = value_of(fdef.priority.run, event, what=what)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConfigurationError(f"{what}: {value!r} is not a number of seconds")
    return float(max(-MAX_PRIORITY, min(MAX_PRIORITY, value)))
