"""`Durable`: the app object. Registry, sending, workers, management API."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, Unpack, get_args

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel

from . import _serde as serde
from ._context import AsyncContext, Context
from ._counts import CAP, QueueSummary, RunCounts
from ._doctor import Check, diagnose
from ._durations import Duration, parse_duration, require_aware
from ._events import Event, PreparedEvent, check_name, prepare
from ._functions import (
    DEFAULT_RETRIES,
    FunctionDef,
    define,
    failure_handler,
    run_options,
    start_options,
)
from ._health import Health, judge
from ._network import connect_direct, own_conninfo
from ._options import FunctionOptions
from ._registry import FunctionInfo, WorkerInfo
from ._replay import FRESH
from ._retention import Policies, Progress, Pruner, Retention
from ._retries import Backoff
from ._rls import Rls, check_role
from ._runs import Run, RunStatus, StepInfo, WaitInfo
from ._store import PARTITIONS_AHEAD, Store, behind_pooler, is_transient
from ._telemetry import Telemetry, TraceRuns
from ._worker import Worker, WorkerSettings
from .errors import (
    ConfigurationError,
    DurableError,
    InvalidEventError,
    MigrationError,
    NotFoundError,
    UnavailableError,
)

log = logging.getLogger("pgdurable")

H = TypeVar("H", bound=Callable[[Context], Any] | Callable[[AsyncContext], Awaitable[Any]])
T = TypeVar("T")

MiB = 1024 * 1024

# Keyword arguments of psycopg.connect() that are not libpq parameters.
_PSYCOPG_CONNECT_ARGS = frozenset({"autocommit", "prepare_threshold", "context", "row_factory",
                                   "cursor_factory"})


_SWAPPED_TRIES = 5  # a send's tries while migrates swap the functions under it, back to back


class Durable:
    """A pgdurable app bound to one Postgres database and schema.

    Give it a DSN, or a psycopg_pool.ConnectionPool (which it never closes),
    or neither to read `PGDURABLE_DSN` then `DATABASE_URL` from the
    environment. Nothing connects until first use.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        schema: str = "pgdurable",
        lease: Duration = "30s",
        dedupe_window: Duration = "24h",
        max_event_bytes: int = 1 * MiB,
        max_output_bytes: int = 4 * MiB,
        retry_backoff: tuple[Duration, Duration] = ("1s", "10m"),
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        user_setting: str = "app.user_id",
        bypass_setting: str = "app.rls_bypass",
        bypass_role: str | None = None,
        retention: Retention | None = None,
        prune_interval: Duration | None = "20m",
        partition_interval: Duration = "1d",
        listen_dsn: str | None = None,
        tracer_provider: Any = None,
        trace_runs: TraceRuns = "link",
        meter_provider: Any = None,
    ) -> None:
        if dsn is not None and pool is not None:
            raise ConfigurationError("give either dsn= or pool=, not both")
        self._store = Store(schema)
        self.schema = schema
        self.lease = parse_duration(lease, what="lease")
        if self.lease < timedelta(seconds=1):
            raise ConfigurationError("lease must be at least 1 second")
        self.dedupe_window = parse_duration(dedupe_window, what="dedupe_window")
        self.max_event_bytes = _positive(max_event_bytes, "max_event_bytes")
        self.max_output_bytes = _positive(max_output_bytes, "max_output_bytes")
        if not isinstance(retry_backoff, tuple | list) or len(retry_backoff) != 2:
            raise ConfigurationError("retry_backoff must be (base, cap), e.g. ('1s', '10m')")
        base, cap = (parse_duration(v, what="retry_backoff").total_seconds() for v in retry_backoff)
        if base <= 0 or cap < base:
            raise ConfigurationError("retry_backoff must have 0 < base <= cap")
        self.retry_backoff = (base, cap)
        self.connect_timeout = connect_timeout
        if retention is not None and not isinstance(retention, Retention):
            raise ConfigurationError("retention takes Retention(completed=, failed=, ...)")
        self.retention = retention or Retention()
        self.prune_interval = (None if prune_interval is None
                               else parse_duration(prune_interval, what="prune_interval"))
        if self.prune_interval is not None and self.prune_interval < timedelta(minutes=1):
            raise ConfigurationError("prune_interval must be at least 1 minute (or None: off)")
        self.partition_interval = parse_duration(partition_interval, what="partition_interval")
        if not timedelta(minutes=1) <= self.partition_interval <= timedelta(days=7):
            raise ConfigurationError("partition_interval must be from 1 minute to 7 days")
        self._settings_given = (retention is not None
                                or self.partition_interval != timedelta(days=1))
        if trace_runs not in ("link", "child"):
            raise ConfigurationError("trace_runs must be 'link' or 'child'")
        self._telemetry = Telemetry(
            tracer_provider=tracer_provider, runs=trace_runs, meter_provider=meter_provider,
            queue=lambda: self.queue_summary(), threads=self._threads_busy)
        self.rls = Rls(self._store, user_setting=user_setting, bypass_setting=bypass_setting,
                       bypass_role=bypass_role)
        self._owns_pool = pool is None
        self._dsn = None if pool is not None else _dsn_from_env(dsn)
        self._listen_dsn = None if listen_dsn is None else _dsn_from_env(listen_dsn)
        # Whether `dsn` goes through a transaction pooler (PgBouncer): said by
        # listen_dsn, else found on the first connection (None until then).
        self._pooler: bool | None = True if listen_dsn is not None else None
        self._store.prepare = listen_dsn is None
        self._pool_size = _positive(pool_size, "pool_size")
        self._pool: ConnectionPool[Any] = pool or self._new_pool()
        self._pool_opened = False
        self._functions: dict[str, FunctionDef] = {}
        self._triggers: dict[str, list[FunctionDef]] = {}
        self._schemas: dict[str, type[BaseModel]] = {}
        self._worker: Worker | None = None
        self._open_lock = threading.Lock()

    def _new_pool(self) -> ConnectionPool[Any]:
        assert self._dsn is not None
        return ConnectionPool(own_conninfo(self._dsn, self.connect_timeout), open=False,
                              min_size=1, max_size=self._pool_size,
                              kwargs={"autocommit": True}, configure=self._configure,
                              name=f"pgdurable-{self.schema}")

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Setup of the connections of pools pgdurable creates: fast jsonb
        parsing, and no prepared statements through a pooler."""
        set_json_loads(serde.loads, conn)
        self._through_pooler(conn)
        if not self._pooler:  # a pooler keeps no session settings
            self._store.session_settings(conn, bounded=True)
            self._store.bounded = True

    def _through_pooler(self, conn: psycopg.Connection[Any]) -> None:
        """Find out, on the first connection, whether it goes through a
        transaction pooler: one that hands each transaction a server
        connection of its own, where a statement prepared in one is unknown
        in the next, a session's LISTEN hears nothing, and a session's lock
        or setting stays behind for the next client. Then prepare nothing."""
        if self._pooler is None:
            server_port = self._store.server_port(conn)
            self._pooler = behind_pooler(server_port, conn.info.port)
            self._store.prepare = not self._pooler
            if self._pooler:
                log.warning("Postgres is reached through a pooler (server port %s, ours %s): no "
                            "prepared statements; workers poll for work instead of LISTEN and "
                            "do not prune, unless Durable(listen_dsn=...) names a direct "
                            "connection for that", server_port, conn.info.port)
        if self._pooler:
            conn.prepare_threshold = None

    @property
    def conninfo(self) -> str:
        """The connection string of the pool, for connections of our own (LISTEN)."""
        conninfo = self._pool.conninfo() if callable(self._pool.conninfo) else self._pool.conninfo
        kwargs = self._pool.kwargs() if callable(self._pool.kwargs) else self._pool.kwargs
        extra = {k: v for k, v in (kwargs or {}).items()  # libpq parameters only
                 if isinstance(v, str | int) and not isinstance(v, bool)
                 and k not in _PSYCOPG_CONNECT_ARGS}
        return make_conninfo(conninfo, **extra)

    @property
    def direct_conninfo(self) -> str | None:
        """Where session-scoped work goes (LISTEN, pruning's lock and VACUUM
        settings): `listen_dsn` if given, else the pool's connection string
        unless that goes through a pooler (None: that work is not done)."""
        if self._listen_dsn is not None:
            return self._listen_dsn
        if self._pooler is None:
            with self._pooled():
                pass  # the first connection finds out
        return None if self._pooler else self.conninfo

    @contextmanager
    def _direct(self, why: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own straight to Postgres (autocommit), for
        work that needs a session: `why`, said if there is none."""
        direct = self.direct_conninfo
        if direct is None:
            raise ConfigurationError(f"{why}, which a pooler does not keep: give "
                                     "Durable(listen_dsn=...) a direct DSN")
        try:
            conn = connect_direct(direct, self.connect_timeout, self._store)
        except psycopg.OperationalError as exc:
            raise UnavailableError(f"cannot connect to Postgres at {_redacted(direct)}: "
                                   f"{str(exc).strip()}") from None
        with conn, _translated_errors(self.schema):
            yield conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction that commits when the block exits
        (and rolls back if it raises)."""
        with self._pooled() as conn, conn.transaction():
            self._store.unbounded(conn)  # the caller's code runs in it
            yield conn

    @contextmanager
    def _pooled(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection as it is: in autocommit if the pool is ours, so a
        single statement (all pgdurable needs, mostly) is one round trip.
        UnavailableError if none comes within `timeout` (default:
        connect_timeout) or the connection breaks."""
        if self._owns_pool and not self._pool_opened:
            with self._open_lock:
                if not self._pool_opened:
                    self._pool.open(wait=False)  # connects in the background, retrying
                    self._pool_opened = True
        stack = ExitStack()
        try:
            conn = stack.enter_context(self._pool.connection(
                timeout=self.connect_timeout if timeout is None else timeout))
        except PoolTimeout:
            raise UnavailableError(
                f"cannot connect to Postgres at {_redacted(self.conninfo)} within "
                f"{self.connect_timeout} s (unreachable, or all {self._pool.max_size} "
                "pooled connections busy)") from None
        with stack, _translated_errors(self.schema, conn):
            if not self._owns_pool:  # ours are set up as they connect
                self._through_pooler(conn)
            yield conn

    # -- schema -----------------------------------------------------------

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; idempotent and safe to run concurrently.
        Returns the migration versions applied by this call."""
        with self.connection() as conn:
            applied = self._store.migrate(conn)
            self._record_policies(conn)
            self._store.add_partitions(conn, PARTITIONS_AHEAD)
        return applied

    def create_roles(self, sender: str = "pgdurable_sender",
                     worker: str = "pgdurable_worker") -> None:
        """Create (unless they exist) and grant the two least-privilege roles:
        `sender` may only send events and read run state, `worker` runs
        workers. Both are NOLOGIN: grant them to your login roles. Run it as
        the role that runs migrations; upgrades keep the grants."""
        sender, worker = check_role(sender, "sender"), check_role(worker, "worker")
        with self.connection() as conn:
            self._store.create_roles(conn, sender, worker)

    # -- registry ---------------------------------------------------------

    def event(self, name: str, schema: type[BaseModel]) -> None:
        """Validate the data of events called `name` against a pydantic model when sent."""
        check_name(name)
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise ConfigurationError(f"schema of event {name!r} must be a pydantic BaseModel subclass")
        self._schemas[name] = schema

    def function(
        self, *, id: str, event: str | list[str] | None = None, retries: int = DEFAULT_RETRIES,
        **options: Unpack[FunctionOptions],
    ) -> Callable[[H], H]:
        """Register the decorated handler as a function: a `def` handler
        receives a `Context`, an `async def` one an `AsyncContext`. The
        options are those of `FunctionOptions`; a bad one raises
        ConfigurationError here, at import time."""

        def register(handler: H) -> H:
            fdef = define(handler, id=id, event=event, retries=retries, options=dict(options))
            defs = [d for d in (fdef, failure_handler(fdef)) if d is not None]
            for d in defs:
                if d.id in self._functions:
                    raise ConfigurationError(f"a function with id {d.id!r} is already registered")
            for d in defs:
                self._functions[d.id] = d
            for name in fdef.events:
                self._triggers.setdefault(name, []).append(fdef)
            return handler

        return register

    # -- events -----------------------------------------------------------

    def send(
        self,
        name_or_events: str | Event | Sequence[Event],
        data: dict[str, Any] | BaseModel | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[str]:
        """Store events and create the runs they trigger, in one transaction.

        With `conn=`, that is the caller's transaction: the events exist if
        and only if it commits. Returns the event ids, in order; an id already
        seen within the dedupe window is returned and nothing more is done.
        """
        return self._send(self._events_of(name_or_events, data, id, ts), conn, generated=False)

    def _send_generated(self, events: list[Event]) -> list[str]:
        """`send` for events from `step.send_event`, whose ids may be in the
        namespace reserved for the ids pgdurable generates."""
        return self._send(events, None, generated=True)

    def _send(
        self, events: list[Event], conn: psycopg.Connection[Any] | None, *, generated: bool
    ) -> list[str]:
        with self._telemetry.sending([e.name for e in events]) as trace_json:
            prepared = [prepare(e, self._schemas.get(e.name), max_bytes=self.max_event_bytes,
                                generated=generated, trace_json=trace_json) for e in events]
            unique = list({p.id: p for p in reversed(prepared)}.values())[::-1]
            runs = [self._run_spec(index, event, fdef)
                    for index, event in enumerate(unique, start=1)
                    for fdef in self._triggers.get(event.name, ())]
            if trace_json is not None:
                self._telemetry.sent([p.id for p in unique])
            if conn is not None:
                with _translated_errors(self.schema):
                    self._store.send_events(conn, unique, runs, self.dedupe_window)
            else:
                self._send_own(unique, runs, generated)
        return [p.id for p in prepared]

    def _send_own(
        self, events: list[PreparedEvent], runs: list[list[Any]], generated: bool
    ) -> None:
        """Send on a pooled connection; this process's worker, if any, starts
        what it can of the new runs at once (Worker.send_and_start)."""
        worker = self._worker
        if worker is None or not worker.send_and_start(events, runs, self._on_own):
            self._on_own(partial(self._store.send_events, events=events, runs=runs,
                                 dedupe_window=self.dedupe_window, generated=generated))

    def _on_own(self, statement: Callable[[psycopg.Connection[Any]], T]) -> T:
        """One statement on a pooled connection (autocommit), tried again
        while it may not have run: its connection broke (Postgres restarted,
        the network failed; UnavailableError once connect_timeout has passed),
        or a `migrate` recreated the functions under it (up to _SWAPPED_TRIES
        times). Only for statements safe to repeat: reads, and sends (an
        event id already stored is skipped, so a send that landed is not
        repeated)."""
        deadline = time.monotonic() + self.connect_timeout
        delay, swapped = 0.01, 0
        while True:
            try:
                with self._pooled(max(0.0, deadline - time.monotonic())) as own:
                    return statement(own)
            except UnavailableError:
                if time.monotonic() + delay >= deadline:
                    raise
            except psycopg.errors.InternalError_ as exc:
                swapped += 1
                if not is_transient(exc) or swapped >= _SWAPPED_TRIES:
                    raise
                continue  # the new functions are there already
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def _run_spec(index: int, event: PreparedEvent, fdef: FunctionDef) -> list[Any]:
        """What `send_events` needs to create a run of `fdef` for an event
        (or to put the event in one of its batches)."""
        if not fdef.has_run_options:
            return [index, fdef.id, fdef.retries]
        try:
            options = run_options(fdef, Event(event.name, json.loads(event.data_json), event.id,
                                              event.ts))
        except ConfigurationError as exc:
            raise InvalidEventError(f"event {event.name!r} (id {event.id}): {exc}") from None
        return [index, fdef.id, fdef.retries, options]

    @staticmethod
    def _events_of(
        name_or_events: str | Event | Sequence[Event], data: Any, id: str | None,
        ts: datetime | None,
    ) -> list[Event]:
        if isinstance(name_or_events, str):
            return [Event(name=name_or_events, data={} if data is None else data, id=id, ts=ts)]
        if data is not None or id is not None or ts is not None:
            if not isinstance(name_or_events, Event | list | tuple):
                check_name(name_or_events)  # says what the name should be
            raise InvalidEventError("data=, id= and ts= go with an event name, not with Event objects")
        events = [name_or_events] if isinstance(name_or_events, Event) else list(name_or_events)
        for event in events:
            if not isinstance(event, Event):
                raise InvalidEventError(f"expected Event objects, got {type(event).__name__}")
        return events

    # -- workers ----------------------------------------------------------

    def start(self, threads: int = 4, *, prefetch: int | None = None,
              poll_interval: float = 1.0, eager: bool = True) -> None:
        """Start worker threads in this process and return.

        `prefetch` runs beyond `threads` are claimed ahead (default: 4 x `threads`).
        With `eager`, a run that this process sends (without `conn=`) starts in
        an idle thread of this worker as soon as the send commits, if its
        function has no flow control or other run options.
        """
        if self._worker is not None:
            raise DurableError("this app's worker is already started")
        if not 1 <= _positive(threads, "threads") <= 256:
            raise ConfigurationError("threads must be from 1 to 256")
        settings = WorkerSettings(
            threads=threads, prefetch=4 * threads if prefetch is None else prefetch,
            poll_interval=poll_interval, eager=eager, lease=self.lease,
            backoff=Backoff(*self.retry_backoff), dedupe_window=self.dedupe_window,
            max_output_bytes=self.max_output_bytes, direct_conninfo=self.direct_conninfo,
            connect_timeout=self.connect_timeout, telemetry=self._telemetry,
            policies=self._policies(), prune_interval=self.prune_interval)
        worker = Worker(settings, self._store, self._pool, self._functions, rls=self.rls,
                        send=self._send_generated)
        with self.connection() as conn:
            if not self._store.is_migrated(conn):
                raise MigrationError(
                    f"schema {self.schema!r} is not migrated; call app.migrate() "
                    "or run `pgdurable migrate`")
            worker.register(conn)
        self._worker = worker
        worker.start()
        self._telemetry.look()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain the worker (running handlers get `timeout` seconds), then close
        the pool if this app created it (a new one opens if the app is used again)."""
        if self._worker is not None:
            self._worker.stop(timeout)
            self._worker = None
        if self._owns_pool and self._pool_opened:
            with self._open_lock:
                self._pool.close()
                self._pool = self._new_pool()  # the app stays usable: it reopens on demand
                self._pool_opened = False

    # -- management -------------------------------------------------------

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or None."""
        run_id = _run_id(run_id)
        return self._on_own(lambda conn: self._store.get_run(conn, run_id))

    def wait_for_run(self, run_id: str, timeout: float = 60.0) -> Run:
        """Return the run once it is terminal; raise TimeoutError if it is not in time."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            run = self.get_run(run_id)
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            if run.is_terminal:
                return run
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)

    def get_event(self, event_id: str) -> Event | None:
        """The stored event with this id (its data as stored), or None."""
        return self._on_own(lambda conn: self._store.event(conn, event_id))

    def list_events(
        self, *, name: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 100, after: str | None = None,
    ) -> list[Event]:
        """Stored events, newest first, `limit` at a time: for the next page,
        pass the id of the last event of this one as `after`. Filters: `name`,
        and `since`/`until` (received in [since, until)). Needs a role that
        may read the events (not the sender role)."""
        query = {
            "name": name, "since": _maybe_aware(since, "since"),
            "until": _maybe_aware(until, "until"), "limit": _positive(limit, "limit"),
            "after": after,
        }
        return self._on_own(lambda conn: self._store.list_events(conn, query))

    def runs_for_event(self, event_id: str) -> list[Run]:
        """The runs an event triggered, oldest first."""
        return self._on_own(lambda conn: self._store.runs_for_event(conn, event_id))

    def list_runs(
        self, *, function: str | None = None, status: str | None = None,
        event: str | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = 100, after: str | None = None, parent: str | None = None,
        forked_from: str | None = None,
    ) -> list[Run]:
        """Runs, newest first, `limit` at a time: for the next page, pass the
        id of the last run of this one as `after`. Filters: `function`,
        `status`, `event` (an event's id or name: the runs it triggered),
        `since`/`until` (created in [since, until), by the time in the run's
        id, to the millisecond), `parent` (the runs it invoked) and
        `forked_from` (its forks)."""
        if status is not None and status not in get_args(RunStatus):
            raise ConfigurationError(
                f"list_runs: status {status!r} is not one of {', '.join(get_args(RunStatus))}")
        query = {
            "function": function, "status": status, "event": event,
            "since": _maybe_aware(since, "since"), "until": _maybe_aware(until, "until"),
            "limit": _positive(limit, "limit"), "after": None if after is None else _run_id(after),
            "parent": None if parent is None else _run_id(parent),
            "fork_of": None if forked_from is None else _run_id(forked_from),
        }
        return self._on_own(lambda conn: self._store.list_runs(conn, query))

    def get_steps(self, run_id: str) -> list[StepInfo]:
        """The steps a run has reached, in the order they began (empty for
        an unknown run)."""
        run_id = _run_id(run_id)
        return self._on_own(lambda conn: self._store.run_steps(conn, run_id))

    def get_waits(self, run_id: str) -> list[WaitInfo]:
        """What a sleeping or waiting run waits for (empty for others)."""
        run_id = _run_id(run_id)
        return self._on_own(lambda conn: self._store.run_waits(conn, run_id))

    def count_runs(self, since: datetime, *, cap: int = CAP) -> RunCounts:
        """Runs created since `since`, by function and status: of the newest
        `cap` at most (RunCounts.capped says when there were more)."""
        since, cap = require_aware(since, what="since"), _positive(cap, "cap")
        return self._on_own(lambda conn: self._store.count_runs(conn, since, cap))

    def _threads_busy(self) -> tuple[int, int] | None:
        """For the metrics: this process's worker's executors (busy, all)."""
        worker = self._worker
        return None if worker is None else worker.threads_busy()

    def queue_summary(self, *, cap: int = CAP) -> QueueSummary:
        """Unfinished runs by function and status (of `cap` at most), and how
        long the oldest run ready to start has waited."""
        cap = _positive(cap, "cap")
        return self._on_own(lambda conn: self._store.queue_summary(conn, cap))

    def health(self, *, check_database: bool = True) -> Health:
        """For liveness and readiness probes: whether this process's worker
        threads are alive, the database answers (within connect_timeout;
        not asked with `check_database=False`, for a liveness probe that
        must answer at once), and the worker recorded its heartbeat within
        its lease."""
        error = None
        try:
            if check_database:
                self._on_own(self._store.database_now)
        except (DurableError, psycopg.Error) as exc:
            error = str(exc)
        worker = self._worker
        return judge(error, None if worker is None else worker.facts(),
                     self.lease.total_seconds())

    def doctor(self) -> list[Check]:
        """Check what hurts in production (schema version, durability
        settings, pooler, autovacuum, backlog, functions no worker serves,
        pruning), each with what to do."""
        with self._pooled() as conn:
            return diagnose(self._store, conn)

    def list_functions(self) -> list[FunctionInfo]:
        """The functions workers have served (as the last one to start
        described them), by id: triggers, cron and its next tick, options,
        and when a worker serving it was last seen."""
        return self._on_own(self._store.list_functions)

    def list_workers(self) -> list[WorkerInfo]:
        """Worker processes that are running, or stopped without saying so
        (`live` False: not seen within their lease) in the last day."""
        return self._on_own(self._store.list_workers)

    def iter_runs(self, *, page: int = 500, unfinished: bool = False,
                  **filters: Any) -> Iterator[Run]:
        """Every run `list_runs` selects with these filters (only the
        `unfinished` ones, if asked), newest first, read `page` at a time:
        for bulk actions over a selection."""
        after = None
        while True:
            runs = self.list_runs(**filters, limit=page, after=after)
            yield from (run for run in runs if not (unfinished and run.is_terminal))
            if len(runs) < page:
                return
            after = runs[-1].id

    def cancel(self, run_id: str, *, actor: str | None = None) -> bool:
        """Cancel a run: at once if it is not running, else at its next step
        boundary. False if it is unknown or already finished. Once it has
        returned True, the run ends `cancelled` and starts no other step.
        Logged in `operator_audit` as done by `actor` (default: the database
        user)."""
        run_id = _run_id(run_id)
        with self.connection() as conn:
            cancelled = self._store.cancel_run(conn, run_id)
            if cancelled:
                self._store.audit(conn, "cancel", [run_id], actor)
        if cancelled:
            time.sleep(FRESH)  # until no worker can start a step unaware of it
        return cancelled

    def cancel_runs(
        self, function: str | None = None, *, created_after: datetime | None = None,
        created_before: datetime | None = None, run_ids: Sequence[str] | None = None,
        actor: str | None = None,
    ) -> int:
        """Cancel every unfinished run of `function` created in
        [created_after, created_before) (open-ended where omitted), or those
        among `run_ids`, as `cancel` does each. Returns how many were
        cancelled or will be."""
        if (function is None) == (run_ids is None):
            raise ConfigurationError("cancel_runs: give a function or run_ids, not both")
        if function is not None and function not in self._functions:
            raise ConfigurationError(f"cancel_runs: no function {function!r} is registered")
        query = {
            "function": function, "since": _aware(created_after, "created_after", datetime.min),
            "until": _aware(created_before, "created_before", datetime.max),
            "runs": None if run_ids is None else [_run_id(r) for r in run_ids], "who": actor,
        }
        with self.connection() as conn:
            cancelled = self._store.cancel_runs(conn, query)
        if cancelled:
            time.sleep(FRESH)  # until no worker can start a step unaware of them
        return cancelled

    def replay(self, run_id: str, *, actor: str | None = None) -> str:
        """Start a new run of the same function with the same event(s); return its id."""
        with self.connection() as conn:
            run = self._existing_run(conn, run_id)
            retries, options = self._restart(conn, run, self._store.event(conn, run.event_ids[0]))
            new_id = self._store.replay_run(conn, run.id, retries, options)
            assert new_id is not None
            self._store.audit(conn, "replay", [run.id], actor, [{"new_run_id": new_id}])
        return new_id

    def fork(
        self, run_id: str, from_step: str, data: dict[str, Any] | BaseModel | None = None, *,
        actor: str | None = None,
    ) -> str:
        """Start a new run of the same function whose journal reuses the
        steps that finished before step `from_step` began (their outputs
        and errors are returned, not executed again); `from_step` and what
        follows execute again. `data`, when given, replaces the data of the
        run's (first) event, validated as a send validates it; the new event
        is stored, not sent (it triggers nothing else). Returns the new run's
        id; its `forked_from` is `run_id`. Raises NotFoundError, writing
        nothing, if the run or its step is unknown."""
        if not isinstance(from_step, str):
            raise ConfigurationError(f"fork: from_step must be a step key (str), not {from_step!r}")
        with self.connection() as conn:
            run = self._existing_run(conn, run_id)
            event = self._store.event(conn, run.event_ids[0])
            replacement = None
            if data is not None:
                if event is None:
                    raise NotFoundError(f"run {run.id}: its event {run.event_ids[0]} was pruned")
                prepared = prepare(Event(event.name, data), self._schemas.get(event.name),
                                   max_bytes=self.max_event_bytes)
                event = Event(event.name, json.loads(prepared.data_json), prepared.id)
                replacement = {"id": event.id, "name": event.name, "data": event.data}
            retries, options = self._restart(conn, run, event)
            try:
                new_id = self._store.fork_run(conn, run.id, from_step, retries, options,
                                              replacement)
            except pg_errors.NoDataFound as exc:
                hint = exc.diag.message_hint
                raise NotFoundError(f"fork: {exc.diag.message_primary}"
                                    + (f" ({hint})" if hint else "")) from None
            self._store.audit(conn, "fork", [run.id], actor, [{
                "new_run_id": new_id, "from_step": from_step, "data": replacement is not None}])
        return new_id

    def _existing_run(self, conn: psycopg.Connection[Any], run_id: str) -> Run:
        run = self._store.get_run(conn, _run_id(run_id))
        if run is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return run

    def _restart(
        self, conn: psycopg.Connection[Any], run: Run, event: Event | None
    ) -> tuple[int, dict[str, Any] | None]:
        """The retries and start options of a replay or fork of `run` for
        `event`: from the function's definition where this app has it; else
        the retries its workers recorded and the options the run had (None)."""
        fdef = self._functions.get(run.function_id)
        if fdef is None:
            retries = self._store.registered_retries(conn, run.function_id)
            return DEFAULT_RETRIES if retries is None else retries, None
        return fdef.retries, start_options(fdef, event) if event is not None else None

    def prune(
        self, as_of: datetime | None = None, *, dry_run: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """Remove what has expired (as if at `as_of`, when given). Returns
        what went, by kind; waits while another process prunes.

        An app with functions registered or `retention=` (or
        `partition_interval=`) given records them first, as the ones every
        process follows (workers do so as they start, and `migrate`); one
        with neither (a script, the CLI) prunes by what was recorded, and
        removes nothing if nothing was. `dry_run` removes
        nothing and counts the expired runs and the events that could go
        now. `progress(kind, count so far)` follows long work."""
        at = _aware(as_of, "as_of", datetime.now(UTC)) if as_of is not None else None
        pruner = Pruner(self._store, self.dedupe_window)
        if not dry_run:
            with self.connection() as conn:
                self._record_policies(conn)
        with self._direct("prune holds a lock for its session") as conn:
            counts = pruner.prune(conn, at, dry_run=dry_run, progress=progress, wait=True)
        assert counts is not None
        return counts

    def _record_policies(self, conn: psycopg.Connection[Any]) -> None:
        """Record this app's retention and partition_interval as the ones every
        process follows, if it has functions or was given them (not a bare
        app such as the CLI's, which follows what was recorded)."""
        if self._functions or self._settings_given:
            self._policies().record(self._store, conn)

    def _policies(self) -> Policies:
        return Policies.of(self.retention, [(f.id, f.retention) for f in self._functions.values()],
                           self.partition_interval)

    def __enter__(self) -> Durable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()




def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive int, not {value!r}")
    return value


def _aware(value: datetime | None, what: str, default: datetime) -> datetime:
    return _maybe_aware(value, what) or default.replace(tzinfo=UTC)


def _maybe_aware(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else require_aware(value, what=what)


def _run_id(run_id: str) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise ConfigurationError(f"{run_id!r} is not a run id (a UUID)") from None


def env_dsn() -> str | None:
    """The DSN the environment gives: `PGDURABLE_DSN`, else `DATABASE_URL`."""
    return os.environ.get("PGDURABLE_DSN") or os.environ.get("DATABASE_URL")


def _dsn_from_env(dsn: str | None) -> str:
    found = dsn or env_dsn()
    if not found:
        raise ConfigurationError(
            "no database given: pass a DSN or pool=, or set PGDURABLE_DSN or DATABASE_URL")
    try:
        psycopg.conninfo.conninfo_to_dict(found)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"{_redacted_text(found)!r} is not a PostgreSQL connection "
                                 f"string or URL ({str(exc).strip()})") from None
    return found


def _redacted_text(dsn: str) -> str:
    """A DSN that did not parse, with anything that looks like a password cut."""
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn))


def _redacted(conninfo: str) -> str:
    """Where a connection string leads, for messages: no password, no tuning."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(unparsable conninfo)"
    return make_conninfo(**{k: str(v) for k, v in params.items() if k in _WHERE})


_WHERE = ("host", "hostaddr", "port", "dbname", "user")


@contextmanager
def _translated_errors(schema: str, own: psycopg.Connection[Any] | None = None) -> Iterator[None]:
    """Turn 'relation/function does not exist' into a migration hint and,
    on a connection of our `own`, its breaking into UnavailableError."""
    try:
        yield
    except (pg_errors.UndefinedTable, pg_errors.UndefinedFunction, pg_errors.InvalidSchemaName) as exc:
        raise MigrationError(
            f"schema {schema!r} is not migrated ({exc.diag.message_primary}); "
            "call app.migrate() or run `pgdurable migrate`") from exc
    except psycopg.OperationalError as exc:
        if own is None or not own.broken:
            raise
        raise UnavailableError(f"lost the connection to Postgres: {str(exc).strip()}") from exc
