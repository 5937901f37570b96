"""Events: the model, id generation and validation before anything is written."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from . import _serde as serde
from ._durations import require_aware
from .errors import InvalidEventError, PayloadTooLargeError, SerializationError

MAX_NAME_LENGTH = 256
MAX_ID_LENGTH = 256
# Ids pgdurable generates for events sent from steps (`step.send_event`):
# no sender may use it, so none can take such an id first.
GENERATED_ID_PREFIX = "pgdurable:"


@dataclass(frozen=True, slots=True)
class Event:
    """An event as sent (`id` and `ts` are filled in by `send` when omitted)."""

    name: str
    data: Mapping[str, Any] | BaseModel
    id: str | None = None
    ts: datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Event:
        """An event as the database returns it: {id, name, data, ts (ISO text)}."""
        return cls(doc["name"], doc["data"], doc["id"], datetime.fromisoformat(doc["ts"]))

    def to_doc(self) -> dict[str, Any]:
        """The event as `from_doc` reads it, and as `match=`, `if_=` and keys see
        it; `data` must be JSON already (as stored or as `send` parsed it)."""
        return {"id": self.id, "name": self.name, "data": self.data,
                "ts": self.ts.isoformat() if self.ts else None}


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event validated and serialized, ready for one INSERT."""

    id: str
    name: str
    data_json: str
    ts: datetime | None
    trace_json: str | None = None  # the sending span's context, as JSON (_telemetry)
    keys_json: str | None = None  # callable keys' values (_functions.with_computed_keys)


_clock_lock = threading.Lock()
_last_stamp = [0, 0]  # the millisecond and 12-bit sequence of the previous id


def new_event_id() -> str:
    """A UUIDv7 as text: time-ordered, and strictly increasing within a process
    (a 12-bit sequence orders ids of the same millisecond, RFC 9562 method 1)."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")  # one system call for both
    with _clock_lock:
        last_millis, last_seq = _last_stamp
        if millis <= last_millis:
            millis, seq = last_millis, last_seq + 1
            if seq > 0xFFF:  # 4,096 ids in one millisecond: borrow the next one
                millis, seq = millis + 1, 0
        else:
            seq = (random >> 64) & 0x7FF  # leaves room to count up
        _last_stamp[:] = [millis, seq]
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | random & (2**62 - 1)
    h = f"{value:032x}"  # as str(uuid.UUID(int=value)), without building the UUID
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_name(name: object, *, what: str = "event name") -> str:
    if not isinstance(name, str):
        raise InvalidEventError(f"{what} must be a str, not {type(name).__name__}")
    if not name.strip():
        raise InvalidEventError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidEventError(f"{what} {name[:40]!r}... is longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in name:
        raise InvalidEventError(f"{what} {name!r} contains a NUL character")
    return name


def prepare(
    event: Event, schema: type[BaseModel] | None, *, max_bytes: int, generated: bool = False,
    trace_json: str | None = None,
) -> PreparedEvent:
    """Validate one event against its schema and limits, and serialize it.
    Only `generated` events (pgdurable's own) may have ids in its namespace."""
    name = check_name(event.name)
    data = _validated_data(name, event.data, schema)
    try:
        data_json = serde.dumps(data, what=f"data of event {name!r}", limit=None)
    except SerializationError as exc:
        raise InvalidEventError(str(exc)) from None
    if len(data_json) > max_bytes:
        raise PayloadTooLargeError(
            f"data of event {name!r} is {len(data_json):,} bytes of JSON, "
            f"over the limit of {max_bytes:,} bytes"
        )
    event_id = new_event_id() if event.id is None else _checked_id(name, event.id, generated)
    ts = None if event.ts is None else require_aware(
        event.ts, what=f"ts of event {name!r}", error=InvalidEventError)
    return PreparedEvent(event_id, name, data_json, ts, trace_json)


def _validated_data(name: str, data: Any, schema: type[BaseModel] | None) -> Any:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    if not isinstance(data, Mapping):
        raise InvalidEventError(
            f"data of event {name!r} must be a dict (or pydantic model), not {type(data).__name__}"
        )
    if schema is None:
        return data
    try:
        return schema.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidEventError(f"event {name!r} does not match its schema: {problems}") from None


def _checked_id(name: str, event_id: object, generated: bool) -> str:
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LENGTH:
        raise InvalidEventError(
            f"id of event {name!r} must be a non-empty str of at most {MAX_ID_LENGTH} characters"
        )
    if "\x00" in event_id:
        raise InvalidEventError(f"id of event {name!r} contains a NUL character")
    if event_id.startswith(GENERATED_ID_PREFIX) and not generated:
        raise InvalidEventError(f"id of event {name!r} starts with {GENERATED_ID_PREFIX!r}, "
                                "which is reserved for the ids pgdurable generates")
    return event_id
