"""The worker: claims runs, executes handlers in threads, keeps leases alive.

Threads of one worker:
- the claimer: claims due runs in batches (`FOR UPDATE SKIP LOCKED`) when
  slots are free, woken by LISTEN/NOTIFY or a jittered poll;
- the listener: holds a LISTEN connection, wakes the claimer, and hears
  cancels of the runs held (with a barrier that dates what it has heard);
- the heartbeat: extends the leases of every run held, and learns of cancels;
- the journal writer (_journal.py): group-commits steps and run transitions;
- the prober (a second journal.Journal): batches the read-only questions
  "was this run asked to cancel?" of step boundaries that have no fresh answer;
- the lanes (_lanes.py) that execute handlers: N executor threads for `def`
  handlers, one run at a time each; one event loop for `async def` ones,
  many runs at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from tenacity import Retrying, retry_if_exception, stop_never, wait_random_exponential

from . import _serde as serde
from ._context import CURRENT_RUN, AsyncContext, BaseContext, Context
from ._control import Cancelled, Park, Suspend
from ._events import Event, PreparedEvent
from ._functions import FunctionDef, send_spec, start_options
from ._health import WorkerFacts
from ._journal import Journal
from ._lanes import Lane, LoopLane, ThreadLane, run_handler
from ._logs import run_fields
from ._network import Outage, Watchdog, connect_direct
from ._records import Checkpoint, ClaimedRow, Finish, StepRecord, WaitSpec
from ._registry import describe
from ._replay import FRESH, Hearing, RunState
from ._retention import BACKGROUND_DUTY, Policies, Pruner
from ._retries import Backoff, error_json, gives_up, retry_time
from ._rls import Rls
from ._schedules import Scheduler
from ._steps import AsyncStep, Step
from ._store import Query, Store, is_transient
from ._telemetry import Telemetry, context_json
from ._vacuum import CHECK_EVERY as VACUUM_CHECK
from ._vacuum import HotVacuum
from ._version import __version__
from .errors import ConfigurationError, RetryAfterError, StepError

INVOKED_EVENT = "pgdurable/invoked"  # the event of a run started by step.invoke
DEFAULT_ASYNC_RUNS = 100  # async handlers executing at once, by default (see bench/RESULTS.md)

log = logging.getLogger("pgdurable.worker")

_PARTITION_CHECK = timedelta(hours=1)  # how often, at most, a worker makes partitions ahead


@dataclass(frozen=True, slots=True)
class EagerStart:
    """A send that also claims the runs it creates for this worker
    (Worker.eager_start): run `query` on a pooled connection at once, then
    `adopt` the runs it claimed (none if it failed)."""

    query: Query[list[ClaimedRow]]
    adopt: Callable[[list[ClaimedRow]], None]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker takes from its app's configuration and from `start()`."""

    threads: int
    prefetch: int
    async_runs: int  # async handlers executing at once, on the worker's event loop
    poll_interval: float
    eager: bool
    lease: timedelta
    backoff: Backoff
    dedupe_window: timedelta
    max_event_bytes: int  # recorded for sends from SQL
    max_output_bytes: int
    # Straight to Postgres, for what needs a session of its own (LISTEN, and
    # pruning's lock and settings); None: there is none (behind a pooler).
    direct_conninfo: str | None
    connect_timeout: float  # of the connections it opens itself
    telemetry: Telemetry
    policies: Policies  # retention, and how much history a partition holds
    prune_interval: timedelta | None  # None: this worker never prunes


class Worker:
    """Executes runs of the app's registered functions in this process."""

    def __init__(
        self, settings: WorkerSettings, store: Store, pool: ConnectionPool[Any],
        functions: dict[str, FunctionDef], *, rls: Rls, send: Callable[[list[Event]], list[str]],
    ) -> None:
        """`send` sends the events of `step.send_event` (their ids may be
        generated ones); `rls` serves the handlers' RLS contexts."""
        self._settings = settings
        self._store = store
        self._pool = pool
        self._functions = dict(functions)
        self.function_ids = tuple(sorted(self._functions))  # what it claims, as SQL takes it
        self._rls = rls
        self._send = send
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._outage = Outage(f"worker {self.id}")
        self._journal = Journal(self._pool, self._store, self._outage, on_written=self._forget,
                                observe=settings.telemetry.journal_written)
        # Probes of cancel requests at step boundaries: read-only batches of
        # their own, so they never wait for a batch of writes to be flushed.
        self._prober = Journal(self._pool, self._store, self._outage)
        self._held: dict[str, RunState] = {}  # claimed, until their outcome is written
        self._held_lock = threading.Lock()  # guards it, and the lanes' counts
        self._settled = threading.Condition(self._held_lock)  # notified as reservations end
        self._wake = threading.Event()
        self.hearing = Hearing()  # the cancels its listener has heard of
        self._heard_cancels: dict[str, None] = {}  # of runs not held (yet), oldest first
        self._next_due = float("inf")  # monotonic time of the earliest retry this worker scheduled
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._lanes = self._make_lanes()
        self._lane_of = {fid: lane for lane in self._lanes for fid in lane.function_ids}
        self._outdated = threading.Event()  # a newer pgdurable migrated: claim no more
        self._scheduler = Scheduler(self._store, self._functions, settings.dedupe_window,
                                    settings.telemetry)
        self._workers: list[threading.Thread] = []
        self._heartbeat_at: float | None = None  # monotonic time of the last one recorded

    def _make_lanes(self) -> list[Lane]:
        """A lane for the `def` handlers and one for the `async def` ones, where there are any."""
        settings = self._settings
        lanes: list[Lane] = []
        if sync := [f.id for f in self._functions.values() if not f.is_async]:
            lanes.append(ThreadLane(sync, settings.threads, settings.prefetch, self._draining,
                                    self._execute))
        if asynchronous := [f.id for f in self._functions.values() if f.is_async]:
            lanes.append(LoopLane(asynchronous, settings.async_runs, settings.async_runs,
                                  self._draining, self._execute_async, settings.threads))
        return lanes

    # -- lifecycle --------------------------------------------------------

    def register(self, conn: psycopg.Connection[Any]) -> None:
        """Record in the database what runs without a sender (the on_failure
        handlers and cron schedules of this worker's functions) and the
        retention that pruners follow."""
        handlers = [(f.failure_of, f.id, f.retries) for f in self._functions.values()
                    if f.failure_of is not None]
        self._store.register_failure_handlers(conn, self.function_ids, handlers)
        self._scheduler.register(conn, self.function_ids)
        self._settings.policies.record(self._store, conn)
        self._store.register_functions(conn, self.id, [
            {**describe(f), "send_spec": send_spec(f).doc} for f in self._functions.values()])
        self._store.record_send_settings(conn, self._settings.dedupe_window,
                                         self._settings.max_event_bytes)
        self._record_presence(conn, starting=True)

    def _record_presence(self, conn: psycopg.Connection[Any], *, starting: bool = False) -> None:
        """The heartbeat's row of `workers`, and when it was last written."""
        self._store.worker_seen(conn, self._presence(starting=starting))
        self._heartbeat_at = time.monotonic()

    def threads_busy(self) -> tuple[int, int]:
        """`def` handlers executing code now, and how many may (`threads`)."""
        lanes = [lane for lane in self._lanes if isinstance(lane, ThreadLane)]
        return sum(lane.busy() for lane in lanes), sum(lane.turns.count for lane in lanes)

    def facts(self) -> WorkerFacts:
        """For `app.health()`: threads that died, and the heartbeat's age."""
        beat = self._heartbeat_at
        return WorkerFacts([t.name for t in self._workers if not t.is_alive()],
                           None if beat is None else time.monotonic() - beat)

    def _presence(self, *, starting: bool = False) -> dict[str, Any]:
        """This worker's row of `workers`, as its heartbeat writes it."""
        with self._held_lock:
            held = len(self._held)
        return {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
                "version": __version__,
                "functions": list(self.function_ids), "threads": self._settings.threads,
                "lease": self._settings.lease, "runs_held": held, "starting": starting}

    def start(self) -> None:
        self._journal.start()
        self._prober.start()
        loops: list[tuple[str, Callable[[], None]]] = [
            ("claimer", self._claim_loop), ("heartbeat", self._heartbeat_loop),
            ("pruner", self._prune_loop),
        ]
        if self._settings.direct_conninfo is not None:
            loops.append(("listener", self._listen_loop))
        else:
            log.warning("worker %s does not LISTEN (no direct connection to Postgres): it finds "
                        "new runs every %s s and does not prune", self.id,
                        self._settings.poll_interval)
        if self._scheduler.has_timers:
            loops.append(("scheduler", self._schedule_loop))
        for name, target in loops:
            thread = threading.Thread(target=target, name=f"pgdurable-{name}", daemon=True)
            thread.start()
            self._workers.append(thread)
        for lane in self._lanes:
            self._workers += lane.start()
        log.info("worker %s started: %d threads, functions %s", self.id, self._settings.threads,
                 ", ".join(self.function_ids) or "(none)")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let running handlers finish (up to `timeout`), release the rest."""
        deadline = time.monotonic() + timeout
        self._draining.set()
        self._wake.set()
        self._join("claimer", deadline)  # no claim may land after the release below
        with self._settled:  # nor a run a sender claimed for us
            self._settled.wait_for(lambda: not any(lane.reserved for lane in self._lanes),
                                   max(0.0, deadline - time.monotonic()))
        for lane in self._lanes:
            lane.stop(deadline)
        self._stopping.set()
        self._release_held()
        self._journal.stop(max(1.0, deadline - time.monotonic()))
        self._prober.stop(1.0)
        for thread in self._workers:
            thread.join(1.0)
        try:
            with self._pool.connection() as conn:
                self._store.worker_stopped(conn, self.id)
        except psycopg.Error as exc:  # its row ages out (shown not live) instead
            log.warning("worker %s could not remove its row from the workers table: %s", self.id, exc)
        log.info("worker %s stopped", self.id)

    def _join(self, kind: str, deadline: float) -> None:
        for thread in self._workers:
            if thread.name.startswith(f"pgdurable-{kind}"):
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def in_flight(self) -> int:
        """Runs claimed whose handler has not finished: what occupies capacity."""
        with self._held_lock:
            return sum(lane.unfinished for lane in self._lanes)

    def _release_held(self) -> None:
        """Queue again every run this worker holds but did not finish."""
        with self._held_lock:
            held = [state for state in self._held.values() if not state.finished]
            self._held.clear()
            for lane in self._lanes:
                lane.unfinished = 0
        releases = [Finish(s.claimed.id, s.claimed.token, "queued", available_at=s.now())
                    for s in held]
        if releases:
            log.warning("releasing %d unfinished runs", len(releases))
            self._journal.submit([], releases)

    # -- claiming ---------------------------------------------------------

    def eager_start(
        self, events: list[PreparedEvent], specs: str, plain: list[tuple[int, str]]
    ) -> EagerStart | None:
        """Reserve idle slots for the new runs of a send by this process that
        this worker can start now, and say how to send `events` and claim
        those runs in the same transaction: they start once it commits,
        without a claim round trip (an eager start). None, and nothing
        reserved, when none can start so."""
        if not self._lanes:
            return None
        lane, wanted = self._startable(events, plain)
        reserved = self._reserve(lane, wanted)
        if not reserved:
            return None
        query = self._store.send_and_claim(
            events, specs, self._settings.dedupe_window, self.id, lane.function_ids, reserved,
            self._settings.lease)
        return EagerStart(query, partial(self.adopt, reservation=(lane, reserved)))

    def _startable(
        self, events: list[PreparedEvent], plain: list[tuple[int, str]]
    ) -> tuple[Lane, int]:
        """How many of the runs to send this worker could start now, in the
        lane that could start most: `plain` runs (no options) of its
        functions, for events not dated in the future."""
        now = datetime.now(UTC)
        counts = dict.fromkeys(self._lanes, 0)
        for index, function_id in plain:
            lane = self._lane_of.get(function_id)
            if lane is not None and ((ts := events[index - 1].ts) is None or ts <= now):
                counts[lane] += 1
        return max(counts.items(), key=lambda item: item[1])

    def _reserve(self, lane: Lane, wanted: int) -> int:
        """Reserve up to `wanted` idle slots of `lane` for runs that a sender
        in this process is about to claim as it creates them (an eager start).
        Each reservation ends with `adopt`."""
        with self._held_lock:
            if not wanted or not self._settings.eager or self._draining.is_set() \
                    or self._outdated.is_set():
                return 0
            granted = min(wanted, lane.idle())
            lane.unfinished += granted
            lane.reserved += granted
            return granted

    def adopt(self, rows: list[ClaimedRow], reservation: tuple[Lane, int] | None = None) -> None:
        """Hand claimed runs to their lanes. After `_reserve`, `rows` are the
        runs claimed under the `reservation` (none if the send failed), and
        the slots they do not need are given back."""
        states = [self._new_state(row) for row in rows]
        with self._held_lock:
            for state in states:  # a cancel heard before its claim's answer
                state.cancel_requested |= state.claimed.id in self._heard_cancels
                self._lane_of[state.claimed.function_id].unfinished += 1
            self._held.update((state.claimed.id, state) for state in states)
            if reservation is not None:
                lane, reserved = reservation
                lane.unfinished -= reserved
                lane.reserved -= reserved
                self._settled.notify_all()
        for state in states:
            self._lane_of[state.claimed.function_id].put(state)

    def _claim_loop(self) -> None:
        if self._settings.direct_conninfo is not None:
            # Runs claimed before LISTEN takes effect must ask at each step
            # boundary whether they were cancelled (see Hearing): let it first.
            self.hearing.first_listen(self._settings.connect_timeout)
        while not self._draining.is_set() and not self._outdated.is_set():
            if time.monotonic() >= self._next_due:
                self._next_due = float("inf")  # this claim picks the retry up
            claimed_all = short = False
            for lane in self._lanes:
                with self._held_lock:
                    free = lane.to_claim()
                if not free:
                    continue
                rows = self._with_db("claim runs", self._claim(lane, free), until=self._draining)
                self.adopt(rows or [])
                if rows:
                    time.sleep(0)  # let an executor take the GIL and start them now
                claimed_all |= rows is not None and len(rows) == free
                short |= rows is not None and len(rows) < free
            if short and not claimed_all:
                self._learn_next_due()
            if not claimed_all:
                self._wake.wait(self._wait_time())
            self._wake.clear()

    def _claim(self, lane: Lane, limit: int) -> Callable[[psycopg.Connection[Any]], list[ClaimedRow]]:
        """A claim of up to `limit` runs for `lane` from the floor its earlier
        claims learned (see DueFloor), which it teaches in turn."""
        def claim(conn: psycopg.Connection[Any]) -> list[ClaimedRow]:
            due_from, began = lane.floor.next(), time.monotonic()
            rows = self._store.claim_runs(conn, self.id, lane.function_ids, limit,
                                          self._settings.lease, due_from)
            lane.floor.claimed(due_from, rows, began)
            return rows
        return claim

    def _learn_next_due(self) -> None:
        """Idle: ask when the next sleeping, waiting or scheduled run comes due,
        so the claimer wakes then rather than at its next poll."""
        due = self._with_db("read the schedule", partial(
            self._store.next_due, function_ids=self.function_ids), until=self._draining)
        if due is not None:
            at = time.monotonic() + (due - datetime.now(UTC)).total_seconds()
            self._next_due = min(self._next_due, at)

    def _wait_time(self) -> float:
        """A jittered poll, cut short when a retry this worker scheduled comes due."""
        poll = self._settings.poll_interval * random.uniform(0.5, 1.0)
        return max(0.0, min(poll, self._next_due - time.monotonic()))

    def _with_db(
        self, what: str, action: Callable[[psycopg.Connection[Any]], Any],
        until: threading.Event | None = None,
        retry: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Exception),
        direct: bool = False,
    ) -> Any:
        """Run `action` on a pooled connection (or a `direct` one), retrying with backoff while
        `retry` says so of what it raises (default: anything, for the
        worker's own loops, which must outlive any error) until it works or
        `until` (default: the worker stopping) is set; None then."""
        until = until or self._stopping
        retrying = Retrying(
            retry=retry_if_exception(retry),
            wait=wait_random_exponential(multiplier=0.1, max=5.0),
            stop=stop_never,
            before_sleep=lambda state: self._db_error(what, state.outcome),
        )
        for attempt in retrying:
            with attempt:
                if until.is_set():
                    return None
                with self._direct() if direct else self._pool.connection(
                        timeout=self._settings.connect_timeout) as conn:
                    done = action(conn)
                self._outage.succeeded()
                return done
        return None

    def _direct(self) -> psycopg.Connection[Any]:
        """A connection of its own, straight to Postgres, in autocommit."""
        assert self._settings.direct_conninfo is not None
        return connect_direct(self._settings.direct_conninfo, self._settings.connect_timeout,
                              self._store)

    def _db_error(self, what: str, outcome: Any) -> None:
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, psycopg.OperationalError):
            self._outage.failed(what, exc)
        else:  # a bug or a broken schema: say so loudly, but keep the worker alive
            log.error("worker cannot %s: %r; retrying", what, exc)

    def _listen_loop(self) -> None:
        """Hear NOTIFYs (work to claim, and cancels of runs held here) on a
        connection of its own, replaced when it fails or stops answering."""
        watchdog = Watchdog("pgdurable-listener-watchdog")
        try:
            while not self._draining.is_set():
                try:
                    with self._direct() as conn:
                        self._store.listen(conn)
                        self.hearing.listening()
                        self._outage.succeeded()
                        self._wake.set()  # notifications may have been missed while away
                        self._listen(conn, watchdog)
                except Exception as exc:  # the poll still claims meanwhile
                    self.hearing.deaf()
                    if isinstance(exc, psycopg.OperationalError):
                        self._outage.failed("LISTEN", exc)
                    else:
                        log.error("worker cannot LISTEN: %r; retrying", exc)
                    self._draining.wait(1.0)
        finally:
            watchdog.close()

    def _listen(self, conn: psycopg.Connection[Any], watchdog: Watchdog) -> None:
        """A statement on the LISTEN connection, every FRESH / 2 seconds
        while runs are held and every half poll interval otherwise, is a
        barrier: its answer comes after every notification committed before
        it, so cancels committed from LISTEN to the barrier are known here
        without asking (see RunState.boundary). It also proves the connection
        alive: the watchdog cuts it if the answer takes a poll interval (1 s
        at least), as on a network path that died silently, so a dead
        listener is replaced within one poll interval rather than when TCP
        gives up."""
        poll = self._settings.poll_interval
        checked = time.monotonic()
        while not self._draining.is_set():
            self._hear(conn.notifies(timeout=FRESH / 2 if self._held else min(0.5, poll / 2)))
            if not self._held and time.monotonic() - checked < poll / 2:
                continue
            checked = time.monotonic()
            watchdog.arm(conn, max(poll, 1.0))
            self._store.barrier(conn)
            watchdog.disarm()
            self._hear(conn.notifies(timeout=0))  # what came with its answer
            self.hearing.barrier(checked)

    def _hear(self, notifications: Iterator[psycopg.Notify]) -> None:
        for notification in notifications:
            kind, _, run_id = notification.payload.partition(" ")
            if kind == "migrated":
                self._check_schema()
            if kind != "cancel":
                self._wake.set()
                continue
            with self._held_lock:
                if (state := self._held.get(run_id)) is not None:
                    state.cancel_requested = True
                else:  # maybe claimed already, its answer not read yet
                    self._heard_cancels[run_id] = None
                    while len(self._heard_cancels) > 10_000:
                        del self._heard_cancels[next(iter(self._heard_cancels))]

    def _check_schema(self) -> None:
        """Once a newer pgdurable has migrated the schema (a rolling deploy),
        claim nothing more: its SQL may no longer be what this code expects.
        Runs held here go on; any that cannot finish are claimed again by
        the new version's workers once their leases lapse."""
        newer = self._with_db("read the schema's version", self._store.newer_schema)
        if newer is not None and not self._outdated.is_set():
            self._outdated.set()
            log.error("worker %s stops claiming runs: %s. Runs it holds go on; restart it on "
                      "the new version", self.id, newer)

    def _heartbeat_loop(self) -> None:
        interval = self._settings.lease.total_seconds() / 3
        while not self._stopping.wait(interval):
            self._check_schema()  # also heard at once by the listener, where there is one
            self._settings.telemetry.look()  # a meter provider set since: observe the gauges
            self._with_db("record the heartbeat", self._record_presence)
            with self._held_lock:
                leases = [(s.claimed.id, s.claimed.token) for s in self._held.values()]
            if not leases:
                continue
            sent = time.monotonic()
            news = self._with_db("extend leases", partial(
                self._store.heartbeat, leases=leases, lease=self._settings.lease))
            if news is None:
                continue
            tokens, whys = dict(leases), dict(news)
            with self._held_lock:
                for run_id, token in tokens.items():
                    state = self._held.get(run_id)
                    if state is None or state.claimed.token != token:  # not that claim
                        continue
                    why = whys.get(run_id)
                    state.lost |= why == "lost"
                    state.cancel_requested |= why == "cancel"
                    if why != "lost":
                        state.lease_until = sent + self._settings.lease.total_seconds()

    def _schedule_loop(self) -> None:
        while not self._outdated.is_set():
            next_tick = self._with_db("start scheduled runs", self._scheduler.start_due,
                                      until=self._draining)
            wait = self._settings.poll_interval
            if next_tick is not None:
                wait = min(wait, max(0.005, (next_tick - datetime.now(UTC)).total_seconds()))
            if self._draining.wait(wait):
                return

    def _prune_loop(self) -> None:
        """Housekeeping: keep history's partitions made ahead and, every
        prune_interval, prune what has expired, in whichever process gets
        there first; VACUUM the hot tables where autovacuum lags."""
        pruner = Pruner(self._store, self._settings.dedupe_window, duty=BACKGROUND_DUTY)
        vacuum = HotVacuum(self._store)
        every = self._settings.prune_interval
        while True:
            self._with_db("vacuum the queue", vacuum, until=self._draining)
            self._with_db("make partitions", pruner.add_partitions, until=self._draining)
            if every is not None and self._settings.direct_conninfo is not None:
                counts = self._with_db("prune", partial(
                    pruner.prune, as_of=None, every=every, until=self._draining),
                    until=self._draining, direct=True)
                if counts is not None:
                    log.log(logging.INFO if any(counts.values()) else logging.DEBUG,
                            "pruned what expired: %s",
                            ", ".join(f"{n} {kind}" for kind, n in counts.items()))
            wait = min(every / 4 if every else _PARTITION_CHECK, _PARTITION_CHECK,
                       self._settings.policies.partition_interval / 2, VACUUM_CHECK)
            if self._draining.wait(wait.total_seconds() * random.uniform(0.8, 1.2)):
                return

    # -- the steps' runtime (_replay.Runtime) -------------------------------

    def register_wait(
        self, state: RunState, key: str, position: int, wait: WaitSpec
    ) -> tuple[str, dict[str, Any] | None]:
        claimed = state.claimed
        found = self._with_db("start a wait", partial(
            self._store.register_wait, run_id=claimed.id, token=claimed.token, key=key,
            position=position, wait=wait), retry=is_transient)
        return found or ("lost", None)

    def resolve(self, function: object) -> tuple[str, int]:
        for fdef in self._functions.values():
            if function == fdef.id or function is fdef.handler:
                return fdef.id, fdef.retries
        raise ConfigurationError(f"invoke: {function!r} is not a function registered in this app")

    def invoke(
        self, state: RunState, key: str, position: int, function_id: str, retries: int,
        data_json: str, expires: datetime | None,
    ) -> str:
        claimed = state.claimed
        options = start_options(self._functions[function_id],
                                Event(INVOKED_EVENT, serde.loads(data_json)))
        outcome = self._with_db("invoke a function", partial(
            self._store.invoke_child, run_id=claimed.id, token=claimed.token, key=key,
            position=position, function_id=function_id, retries=retries,
            data_json=data_json, expires=expires, options=options, trace_json=context_json()),
            retry=is_transient)
        return str(outcome or "lost")

    def send(self, events: list[Event]) -> list[str]:
        return self._send(events)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn, conn.transaction():
            self._store.unbounded(conn)  # a step's code runs in it
            yield conn

    @property
    def rls(self) -> Rls:
        return self._rls

    def transaction(
        self, state: RunState, body: Callable[[psycopg.Connection[Any]], StepRecord]
    ) -> Checkpoint:
        claimed = state.claimed
        with self.connection() as conn:
            cancel = self._store.hold_run(conn, claimed.id, claimed.token)
            if cancel is None:
                raise Park()  # lost to another worker: its writes must not happen
            if cancel:
                raise Cancelled()
            record = body(conn)
            # The step may have switched roles (an RLS bypass role): the
            # journal entry is pgdurable's to write, as the connection's own role.
            self._store.reset_role(conn)
            return self._store.flush(conn, [record], [])

    # -- executing --------------------------------------------------------

    def _new_state(self, claimed: ClaimedRow) -> RunState:
        return RunState(claimed, self._journal, self._prober, self,
                        max_output_bytes=self._settings.max_output_bytes,
                        backoff=self._settings.backoff, lease=self._settings.lease,
                        finish_timeout=self._functions[claimed.function_id].finish_timeout)

    def _execute(self, state: RunState) -> None:
        """Run a `def` handler (in an executor thread of its lane)."""
        try:
            self._settle(state, self._outcome(self._functions[state.claimed.function_id], state))
        except Exception:
            self._cannot_settle(state)

    async def _execute_async(self, state: RunState) -> None:
        """Run an `async def` handler (a task on its lane's event loop)."""
        try:
            fdef = self._functions[state.claimed.function_id]
            self._settle(state, await self._outcome_async(fdef, state))
        except Exception:
            self._cannot_settle(state)

    def _cannot_settle(self, state: RunState) -> None:
        """A bug of ours: the run's lease lapses, and the lane goes on."""
        log.exception("run %s: cannot record its outcome", state.claimed.id,
                      extra=run_fields(state.claimed.id, state.claimed.function_id))

    def _settle(self, state: RunState, outcome: Finish | Suspend | Park) -> None:
        """Hand a handler's outcome to the journal (or, parked, just let the run go)."""
        claimed = state.claimed
        lane = self._lane_of[claimed.function_id]
        steps = []
        if isinstance(outcome, Suspend):
            steps = outcome.records
            outcome = Finish(claimed.id, claimed.token, "queued", error_json=steps[0].error_json,
                             available_at=outcome.retry_at, retry=True)
        elif isinstance(outcome, Park) and outcome.record is not None:
            steps = [outcome.record]
            outcome = Finish(claimed.id, claimed.token, "sleeping", available_at=outcome.until)
        with self._held_lock:
            state.finished = True
            lane.unfinished -= 1
            if isinstance(outcome, Park):  # parked in the database already: nothing to write
                self._held.pop(claimed.id, None)
        if isinstance(outcome, Park):
            if state.lost:
                log.warning("run %s: another worker took it over (this one was cut off past its "
                            "lease); it stops here and writes nothing", claimed.id,
                            extra=run_fields(claimed.id, claimed.function_id))
            self._wake.set()
            return
        self._settings.telemetry.ended(claimed.function_id, outcome)
        if lane.waiting() < lane.slots:
            self._wake.set()  # room to claim more
        if outcome.available_at is not None:
            due = time.monotonic() + (outcome.available_at - datetime.now(UTC)).total_seconds()
            if due < self._next_due:
                self._next_due = due
                self._wake.set()  # let the claimer shorten its wait
        self._journal.submit(steps, [outcome])

    def _forget(self, run_ids: list[str]) -> None:
        """Drop runs whose outcome is written: no more heartbeats for them."""
        with self._held_lock:
            for run_id in run_ids:
                self._held.pop(run_id, None)

    def _outcome(self, fdef: FunctionDef, state: RunState) -> Finish | Suspend | Park:
        """Run a `def` handler; turn what it returns or raises into the run's transition."""
        try:
            with self._running(fdef, state) as ctx:
                result = fdef.handler(ctx)
            return self._completed(fdef, state, result)
        except BaseException as exc:  # anything a handler raises is the run's failure
            return self._ended_by(state, exc)

    async def _outcome_async(self, fdef: FunctionDef, state: RunState) -> Finish | Suspend | Park:
        """`_outcome` of an `async def` handler."""
        try:
            with self._running(fdef, state) as ctx:
                result = await run_handler(fdef.handler(ctx))
            return self._completed(fdef, state, result)
        except BaseException as exc:  # anything a handler raises is the run's failure
            return self._ended_by(state, exc)

    @contextmanager
    def _running(self, fdef: FunctionDef, state: RunState) -> Iterator[Any]:
        """Around a handler: its timeouts checked, its context (yielded) made
        current, its span."""
        _check_timeouts(fdef, state)
        ctx = _context(fdef, state)
        current = CURRENT_RUN.set((self._rls, ctx))
        try:
            with self._settings.telemetry.running(state.claimed):
                yield ctx
        finally:
            CURRENT_RUN.reset(current)

    def _completed(self, fdef: FunctionDef, state: RunState, result: Any) -> Finish:
        claimed = state.claimed
        output = serde.dumps(result, what=f"output of function {fdef.id!r}",
                             limit=self._settings.max_output_bytes)
        return Finish(claimed.id, claimed.token, "completed", output_json=output)

    def _ended_by(self, state: RunState, exc: BaseException) -> Finish | Suspend | Park:
        """The transition of a run whose handler raised `exc`."""
        claimed = state.claimed
        if isinstance(exc, (Suspend, Park)):
            return exc
        if isinstance(exc, Cancelled):
            return Finish(claimed.id, claimed.token, "cancelled",
                          error_json=serde.dumps(exc.error, what="an error"))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or (
                isinstance(exc, asyncio.CancelledError) and self._draining.is_set()):
            log.warning("run %s: handler stopped by %s; releasing the run", claimed.id,
                        "the worker's shutdown" if self._draining.is_set() else type(exc).__name__,
                        extra=run_fields(claimed.id, claimed.function_id))
            return Finish(claimed.id, claimed.token, "queued", available_at=state.now())
        return self._handler_failure(state, exc)

    def _handler_failure(self, state: RunState, exc: BaseException) -> Finish:
        claimed = state.claimed
        failures = claimed.handler_attempts + 1
        # A StepError escaping the handler is final: replay would raise it again.
        if isinstance(exc, StepError) or gives_up(exc, failures, claimed.retries):
            log.warning("run %s of %s failed: %s: %s", claimed.id, claimed.function_id,
                        type(exc).__name__, exc, extra=run_fields(claimed.id, claimed.function_id))
            return Finish(claimed.id, claimed.token, "failed", error_json=error_json(exc))
        retry_at = retry_time(exc, failures, self._settings.backoff, state.after)
        if not isinstance(exc, RetryAfterError):
            log.info("run %s: handler raised %s; retry %d at %s", claimed.id,
                     type(exc).__name__, failures, retry_at,
                     extra=run_fields(claimed.id, claimed.function_id))
        return Finish(claimed.id, claimed.token, "queued", error_json=error_json(exc),
                      available_at=retry_at, retry=True, handler_failed=True)


def _check_timeouts(fdef: FunctionDef, state: RunState) -> None:
    """Cancel a run whose handler would begin later than `timeouts.start`
    after the run was due (counting time spent prefetched in this worker),
    or resumes past its `timeouts.finish` deadline."""
    claimed, limit = state.claimed, fdef.start_timeout
    if claimed.first_start and limit is not None and state.now() - claimed.due_at > limit:
        raise Cancelled.timeout("start", limit)
    state.check_cancelled()


def _context(fdef: FunctionDef, state: RunState) -> BaseContext:
    """What `fdef`'s handler receives: a Context, or an AsyncContext if it is `async def`."""
    if fdef.is_async:
        return AsyncContext(state, AsyncStep(state), failure_of=fdef.failure_of)
    return Context(state, Step(state), failure_of=fdef.failure_of)
