"""Runs that no send starts at once: cron ticks, batches that time out, and
debounced runs.

Cron: one run per tick, whichever workers are up.

Each scheduled function has a row in `<schema>.schedules` holding its next
tick. A worker that finds the row due locks it (`FOR UPDATE SKIP LOCKED`),
sends the tick's `pgdurable/cron` event with its run, and moves the row to
the following tick, in one transaction: another worker looking at the same
moment skips the row, and a crash before the commit leaves it due.

A tick seen more than `MISSED_AFTER` late was missed (no worker was up);
the function's `catch_up` decides: `none` skips missed ticks, `latest` runs
the last of them, `all` runs every one.

Batches: a send that fills a batch starts its run itself (in SQL); a batch
whose oldest event has waited its timeout is started here, as is a
debounced run once its key has been quiet for the period.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from croniter import croniter

from ._events import GENERATED_ID_PREFIX, PreparedEvent
from ._functions import FunctionDef, Schedule, send_spec, specs_json, with_computed_keys
from ._store import Store
from ._telemetry import Telemetry

CRON_EVENT = "pgdurable/cron"
MISSED_AFTER = timedelta(seconds=60)
MAX_TICKS_PER_PASS = 1000  # catch_up="all" after a long outage goes on at the next pass


def following_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first tick of `schedule` strictly after `after`, in UTC."""
    local = after.astimezone(ZoneInfo(schedule.timezone))
    tick: datetime = croniter(schedule.cron, local).get_next(datetime)
    return tick.astimezone(UTC)


def ticks_to_run(schedule: Schedule, due: datetime, now: datetime) -> tuple[list[datetime], datetime]:
    """The ticks from `due` up to `now` that get a run, and the tick after them."""
    ticks: list[datetime] = []
    tick = due
    while tick <= now and len(ticks) < MAX_TICKS_PER_PASS:
        ticks.append(tick)
        tick = following_tick(schedule, tick)
    on_time = [t for t in ticks if now - t <= MISSED_AFTER]
    missed = [t for t in ticks if now - t > MISSED_AFTER]
    if schedule.catch_up == "all":
        return missed + on_time, tick
    if schedule.catch_up == "latest" and missed:
        return [missed[-1], *on_time], tick
    return on_time, tick


class Scheduler:
    """Starts the timed runs of `functions`: cron ticks, batches, debounces."""

    def __init__(self, store: Store, functions: dict[str, FunctionDef], dedupe: timedelta,
                 telemetry: Telemetry) -> None:
        self._store = store
        self._telemetry = telemetry
        self._scheduled = {f.id: f for f in functions.values() if f.schedule is not None}
        self._batched = sorted(f.id for f in functions.values() if f.batch is not None)
        self._debounced = sorted(f.id for f in functions.values() if f.debounce is not None)
        self._dedupe = dedupe

    @property
    def function_ids(self) -> list[str]:
        return sorted(self._scheduled)

    @property
    def has_timers(self) -> bool:
        return bool(self._scheduled or self._batched or self._debounced)

    def start_due(self, conn: psycopg.Connection[Any]) -> datetime | None:
        """Start every due tick, timed-out batch and debounce; return when the next is due."""
        due = []
        if self._scheduled:
            due.append(self.start_due_runs(conn))
        if self._batched:
            due.append(self._store.start_due_batches(conn, self._batched))
        if self._debounced:
            due.append(self._store.start_due_debounces(conn, self._debounced, self._dedupe))
        return min((d for d in due if d is not None), default=None)

    def register(self, conn: psycopg.Connection[Any], all_ids: Sequence[str]) -> None:
        """Write the schedules of these functions (and drop those they lost)."""
        now = datetime.now(UTC)
        rows = []
        for fdef in self._scheduled.values():
            assert fdef.schedule is not None
            rows.append((fdef.id, fdef.schedule.cron, fdef.schedule.timezone,
                         following_tick(fdef.schedule, now)))
        self._store.register_schedules(conn, all_ids, rows)

    def start_due_runs(self, conn: psycopg.Connection[Any]) -> datetime | None:
        """Start the runs of every due tick; return when the next tick is due."""
        with conn.transaction():
            for function_id, due, now in self._store.due_schedules(conn, self.function_ids):
                fdef = self._scheduled[function_id]
                assert fdef.schedule is not None
                ticks, following = ticks_to_run(fdef.schedule, due, now)
                if ticks:
                    self._start_ticks(conn, fdef, ticks)
                self._store.set_next_tick(conn, function_id, following)
        return self._store.next_tick(conn, self.function_ids)

    def _start_ticks(
        self, conn: psycopg.Connection[Any], fdef: FunctionDef, ticks: list[datetime]
    ) -> None:
        """Send the ticks' events with their runs, under a `cron <function
        id>` span when tracing, which the runs then link to."""
        with self._telemetry.sending([CRON_EVENT], span=f"cron {fdef.id}") as trace_json:
            spec = send_spec(fdef)  # the tick starts this function alone, with its options
            events = [with_computed_keys(self._tick_event(fdef, tick, trace_json), [spec])
                      for tick in ticks]
            self._store.execute(conn, self._store.send_events(
                events, specs_json({CRON_EVENT: [spec]}), self._dedupe, generated=True))

    @staticmethod
    def _tick_event(fdef: FunctionDef, tick: datetime, trace_json: str | None) -> PreparedEvent:
        assert fdef.schedule is not None
        data = {"function_id": fdef.id, "cron": fdef.schedule.cron,
                "timezone": fdef.schedule.timezone, "tick": tick.isoformat()}
        # In the reserved namespace: no sender can take a tick's id first.
        return PreparedEvent(f"{GENERATED_ID_PREFIX}cron/{fdef.id}/{tick.isoformat()}",
                             CRON_EVENT, json.dumps(data), tick, trace_json)
