"""Plans of the steps that park a run: sleeps, waits for events, invokes.

A parking step is looked up in the journal first; if it is not done, its
plan says what to do once the run's earlier checkpoints are durable (write
the sleep, register the wait, start the child), which usually ends the
attempt with `Park`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from . import _serde as serde
from ._control import Cancelled, Park
from ._durations import Duration, parse_duration
from ._events import GENERATED_ID_PREFIX, Event, check_name
from ._expressions import event_filter
from ._records import StepRecord, WaitSpec
from ._replay import RunState, given
from ._telemetry import annotate
from .errors import StepError


@dataclass(slots=True)
class Plan:
    """A parking step looked up in the journal: its value if it is done, else
    what to do once the run's earlier checkpoints are durable."""

    value: Any = None
    then: Callable[[], Any] | None = None


def _completed(state: RunState, key: str) -> dict[str, Any] | None:
    entry = state.replayed(key)
    return entry if entry is not None and entry["status"] == "completed" else None


def plan_sleep(state: RunState, step_id: str, until: datetime) -> Plan:
    key = state.key_for(step_id)
    if _completed(state, key):
        return Plan()
    position, now = state.position(key), state.now()
    status = "sleeping" if until > now else "completed"
    record = StepRecord(state.claimed.id, state.claimed.token, key, position, status,
                        serde.dumps(until.isoformat(), what="a time"), None, 1, now)

    def park() -> None:
        if status == "completed":  # nothing left to sleep
            state.checkpoint(record)
            return
        annotate("pgdurable.sleep", {"pgdurable.step": key, "pgdurable.until": until.isoformat()})
        raise Park(record, state.bounded(until))

    return Plan(then=park)


def deadline(state: RunState, duration: Duration, what: str) -> datetime:
    return state.after(parse_duration(duration, what=what))


def wait_spec(
    state: RunState, event: str | list[str], timeout: Duration | None, match: str | None,
    if_: str | None,
) -> WaitSpec:
    names = one_or_many(event, str)
    if not names or not all(names):
        raise TypeError(f"wait_for_event: event must be a name or a list of names, not {event!r}")
    for name in names:
        check_name(name, what="wait_for_event: event name")
    found = event_filter(match, if_, state.claimed.events[0].to_doc(), what="wait_for_event")
    condition = found.condition
    expires = state.bounded(
        None if timeout is None else deadline(state, timeout, "wait_for_event timeout"))
    return WaitSpec(
        names=sorted(set(names)), match_path=found.path,
        match_value_json=serde.dumps(found.value, what="the match value"),
        condition=condition.jsonpath if condition else None,
        condition_vars_json=serde.dumps(condition.variables, what="the if_ values")
        if condition else None,
        expires=expires,
    )


def one_or_many(value: object, kind: type) -> list[Any]:
    """`value` as a list if it is one `kind` or a list/tuple of them; else []."""
    items = [value] if isinstance(value, kind) else value if isinstance(value, list | tuple) else []
    return list(items) if all(isinstance(item, kind) for item in items) else []


def _event_of(doc: dict[str, Any] | None) -> Event | None:
    return None if doc is None else Event.from_doc(doc)


def plan_wait(state: RunState, step_id: str, wait: WaitSpec) -> Plan:
    key = state.key_for(step_id)
    if (entry := _completed(state, key)) is not None:
        return Plan(value=_event_of(entry["output"]))
    position = state.position(key)

    def register() -> Event | None:
        outcome, doc = state.runtime.register_wait(state, key, position, wait)
        annotate("pgdurable.wait", {
            "pgdurable.step": key, "pgdurable.events": wait.names, "pgdurable.outcome": outcome,
            "pgdurable.until": wait.expires.isoformat() if wait.expires else "never"})
        if outcome == "matched":
            return _event_of(doc)
        if outcome == "cancelled":
            raise Cancelled()
        raise Park()  # parked until an event or the timeout; or lost to another worker

    return Plan(then=register)


def plan_invoke(
    state: RunState, step_id: str, function: object, data: Any, timeout: Duration | None
) -> Plan:
    function_id, retries = state.runtime.resolve(function)
    data_json = serde.dumps({} if data is None else data, what=f"data for {function_id!r}")
    expires = state.bounded(None if timeout is None else deadline(state, timeout, "invoke timeout"))
    key = state.key_for(step_id)
    if (entry := _completed(state, key)) is not None:
        if given(entry):  # the child's output itself
            return Plan(value=serde.revive(function, entry["output"]) if callable(function)
                        else entry["output"])
        return Plan(value=_child_result(key, entry["output"], function))
    position = state.position(key)

    def start() -> None:
        annotate("pgdurable.invoke", {"pgdurable.step": key, "pgdurable.function_id": function_id})
        if state.runtime.invoke(state, key, position, function_id, retries, data_json,
                                expires) == "cancelled":
            raise Cancelled()
        raise Park()  # parked until the child ends; or lost to another worker

    return Plan(then=start)


def _child_result(key: str, doc: dict[str, Any] | None, function: object) -> Any:
    """The invoked run's output (revived as the handler's annotated return
    type when `function` is the handler), or StepError if it failed, was
    cancelled or timed out."""
    if doc is None:
        raise StepError(key, "TimeoutError", "the invoked run did not finish within the timeout")
    child = doc["data"]
    if child["status"] == "completed":
        return serde.revive(function, child["output"]) if callable(function) else child["output"]
    error = child.get("error") or {}
    raise StepError(key, str(error.get("type") or child["status"]),
                    str(error.get("message") or f"the invoked run {child['status']}"))


def with_ids(state: RunState, step_id: str, events: Event | list[Event]) -> list[Event]:
    """Events to send from a step, with ids derived from the run and step
    (kept if given), so a replayed send is recognised as a duplicate."""
    items = one_or_many(events, Event)
    if not items:
        raise TypeError(f"send_event takes an Event or a non-empty list of Events, not {events!r}")
    key = state.peek_key(step_id)
    return [e if e.id is not None
            else replace(e, id=f"{GENERATED_ID_PREFIX}{state.claimed.id}/{key}/{n}")
            for n, e in enumerate(items)]

