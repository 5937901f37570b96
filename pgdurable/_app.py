"""`Durable`: the app object. Registry, sending, workers, management API."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, Unpack

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from pydantic import BaseModel

from ._context import AsyncContext, Context
from ._counts import CAP, QueueSummary, RunCounts
from ._database import Database
from ._doctor import Check, diagnose
from ._durations import Duration, parse_duration
from ._events import Event, check_name
from ._functions import DEFAULT_RETRIES, FunctionDef, define, failure_handler
from ._health import Health, judge
from ._manage import Management, aware, events_of, positive
from ._options import FunctionOptions
from ._registry import EventTrigger, FunctionInfo, WorkerInfo
from ._retention import Policies, Progress, Pruner, Retention
from ._retries import Backoff
from ._rls import Rls, check_role
from ._runs import Run, StepInfo, WaitInfo
from ._store import PARTITIONS_AHEAD, Store
from ._telemetry import Telemetry, TraceRuns
from ._worker import DEFAULT_ASYNC_RUNS, Worker, WorkerSettings
from .errors import ConfigurationError, DurableError, MigrationError

log = logging.getLogger("pgdurable")

H = TypeVar("H", bound=Callable[[Context], Any] | Callable[[AsyncContext], Awaitable[Any]])

MiB = 1024 * 1024


class Durable:
    """A pgdurable app bound to one Postgres database and schema.

    Give it a DSN, or a psycopg_pool.ConnectionPool (which it never closes),
    or neither to read `PGDURABLE_DSN` then `DATABASE_URL` from the
    environment. Nothing connects until first use. The `_async` calls use
    an AsyncConnectionPool of `async_pool_size` connections, opened on the
    first of them, or the one given as `async_pool` (never closed by the app).
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
        async_pool: AsyncConnectionPool[Any] | None = None,
        async_pool_size: int = 10,
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
        self.max_event_bytes = positive(max_event_bytes, "max_event_bytes")
        self.max_output_bytes = positive(max_output_bytes, "max_output_bytes")
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
        self._db = Database(
            self._store, dsn=None if pool is not None else _dsn_from_env(dsn), pool=pool,
            async_pool=async_pool, pool_size=positive(pool_size, "pool_size"),
            async_pool_size=positive(async_pool_size, "async_pool_size"),
            listen_dsn=None if listen_dsn is None else _dsn_from_env(listen_dsn),
            connect_timeout=connect_timeout, dedupe_window=self.dedupe_window)
        self._functions: dict[str, FunctionDef] = {}
        self._triggers: dict[str, list[FunctionDef]] = {}
        self._schemas: dict[str, type[BaseModel]] = {}
        self._ops = Management(self._store, self._functions, self._triggers, self._schemas,
                               self._telemetry, max_event_bytes=self.max_event_bytes)
        self._worker: Worker | None = None

    # -- connections --------------------------------------------------------

    @property
    def conninfo(self) -> str:
        """The connection string of the pool, for connections of our own (LISTEN)."""
        return self._db.conninfo

    @property
    def direct_conninfo(self) -> str | None:
        """Where session-scoped work goes (LISTEN, pruning's lock and VACUUM
        settings): `listen_dsn` if given, else the pool's connection string
        unless that goes through a pooler (None: that work is not done)."""
        return self._db.direct_conninfo

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled connection in a transaction that commits when the block exits
        (and rolls back if it raises)."""
        return self._db.connection()

    def connection_async(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """`connection`, from the async pool: `async with app.connection_async()
        as conn:` commits when the block exits (and rolls back if it raises)."""
        return self._db.connection_async()

    async def aclose(self) -> None:
        """Close the async pool, if this app opened one (call it on the
        event loop that used it; a new one opens if the app is used again).
        `stop()` closes it too, if its loop still runs."""
        await self._db.aclose()

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
        if conn is not None and not isinstance(conn, psycopg.Connection):
            raise ConfigurationError(f"send: conn= takes a psycopg Connection, not "
                                     f"{type(conn).__name__} (an AsyncConnection goes to send_async)")
        return self._db.run(self._ops.send(events_of(name_or_events, data, id, ts)), conn)

    async def send_async(
        self,
        name_or_events: str | Event | Sequence[Event],
        data: dict[str, Any] | BaseModel | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[str]:
        """`send`, without blocking the event loop; `conn=` takes a psycopg
        AsyncConnection in a transaction."""
        if conn is not None and not isinstance(conn, psycopg.AsyncConnection):
            raise ConfigurationError(f"send_async: conn= takes a psycopg AsyncConnection, not "
                                     f"{type(conn).__name__} (a Connection goes to send)")
        return await self._db.run_async(
            self._ops.send(events_of(name_or_events, data, id, ts)), conn)

    def _send_generated(self, events: list[Event]) -> list[str]:
        """`send` for events from `step.send_event`, whose ids may be in the
        namespace reserved for the ids pgdurable generates."""
        return self._db.run(self._ops.send(events, generated=True))

    # -- workers ----------------------------------------------------------

    def start(self, threads: int = 4, *, prefetch: int | None = None,
              poll_interval: float = 1.0, eager: bool = True,
              async_runs: int = DEFAULT_ASYNC_RUNS) -> None:
        """Start worker threads in this process and return.

        `def` handlers execute `threads` at a time; a run waiting for its
        journal to commit lends its turn, so up to 16 x `threads` runs are
        under way (at most 256 threads), and `prefetch` more are claimed
        ahead (default: 4 x `threads`). `async def`
        handlers run as tasks of one event loop, up to `async_runs` at once
        (as many again claimed ahead); their `def` step functions run in
        `threads` threads. With `eager`, a run that this process sends
        (without `conn=`) starts in an idle slot of this worker as soon as
        the send commits, if its function has no flow control or other run
        options.
        """
        if self._worker is not None:
            raise DurableError("this app's worker is already started")
        if not 1 <= positive(threads, "threads") <= 256:
            raise ConfigurationError("threads must be from 1 to 256")
        if not 1 <= positive(async_runs, "async_runs") <= 10_000:
            raise ConfigurationError("async_runs must be from 1 to 10000")
        settings = WorkerSettings(
            threads=threads, prefetch=4 * threads if prefetch is None else prefetch,
            async_runs=async_runs,
            poll_interval=poll_interval, eager=eager, lease=self.lease,
            backoff=Backoff(*self.retry_backoff), dedupe_window=self.dedupe_window,
            max_event_bytes=self.max_event_bytes, max_output_bytes=self.max_output_bytes,
            direct_conninfo=self.direct_conninfo, connect_timeout=self.connect_timeout,
            telemetry=self._telemetry, policies=self._policies(), prune_interval=self.prune_interval)
        worker = Worker(settings, self._store, self._db.pool, self._functions, rls=self.rls,
                        send=self._send_generated)
        with self.connection() as conn:
            if not self._store.is_migrated(conn):
                raise MigrationError(
                    f"schema {self.schema!r} is not migrated; call app.migrate() "
                    "or run `pgdurable migrate`")
            worker.register(conn)
        self._worker = self._db.worker = worker
        worker.start()
        self._telemetry.look()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain the worker (running handlers get `timeout` seconds), then close
        the pools this app created (new ones open if the app is used again)."""
        if self._worker is not None:
            self._worker.stop(timeout)
            self._worker = self._db.worker = None
        self._db.close()

    # -- management -------------------------------------------------------
    # Each call is an operation of _manage.py, driven on sync connections or,
    # by its `_async` twin, on async ones: same arguments, results and errors.

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or None."""
        return self._db.run(self._ops.get_run(run_id))

    async def get_run_async(self, run_id: str) -> Run | None:
        """`get_run`, without blocking the event loop."""
        return await self._db.run_async(self._ops.get_run(run_id))

    def wait_for_run(self, run_id: str, timeout: float = 60.0) -> Run:
        """Return the run once it is terminal; raise TimeoutError if it is not
        in time. It reads the run with a backoff (5 ms, doubling, to 200 ms)."""
        return self._db.run(self._ops.wait_for_run(run_id, timeout))

    async def wait_for_run_async(self, run_id: str, timeout: float = 60.0) -> Run:
        """`wait_for_run`, without blocking the event loop."""
        return await self._db.run_async(self._ops.wait_for_run(run_id, timeout))

    def get_event(self, event_id: str) -> Event | None:
        """The stored event with this id (its data as stored), or None."""
        return self._db.run(self._ops.get_event(event_id))

    async def get_event_async(self, event_id: str) -> Event | None:
        """`get_event`, without blocking the event loop."""
        return await self._db.run_async(self._ops.get_event(event_id))

    def list_events(
        self, *, name: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 100, after: str | None = None,
    ) -> list[Event]:
        """Stored events, newest first, `limit` at a time: for the next page,
        pass the id of the last event of this one as `after`. Filters: `name`,
        and `since`/`until` (received in [since, until)). Needs a role that
        may read the events (not the sender role)."""
        return self._db.run(self._ops.list_events(
            name=name, since=since, until=until, limit=limit, after=after))

    async def list_events_async(
        self, *, name: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 100, after: str | None = None,
    ) -> list[Event]:
        """`list_events`, without blocking the event loop."""
        return await self._db.run_async(self._ops.list_events(
            name=name, since=since, until=until, limit=limit, after=after))

    def runs_for_event(self, event_id: str) -> list[Run]:
        """The runs an event triggered, oldest first."""
        return self._db.run(self._ops.runs_for_event(event_id))

    async def runs_for_event_async(self, event_id: str) -> list[Run]:
        """`runs_for_event`, without blocking the event loop."""
        return await self._db.run_async(self._ops.runs_for_event(event_id))

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
        return self._db.run(self._ops.list_runs(
            function=function, status=status, event=event, since=since, until=until,
            limit=limit, after=after, parent=parent, forked_from=forked_from))

    async def list_runs_async(
        self, *, function: str | None = None, status: str | None = None,
        event: str | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = 100, after: str | None = None, parent: str | None = None,
        forked_from: str | None = None,
    ) -> list[Run]:
        """`list_runs`, without blocking the event loop."""
        return await self._db.run_async(self._ops.list_runs(
            function=function, status=status, event=event, since=since, until=until,
            limit=limit, after=after, parent=parent, forked_from=forked_from))

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

    def get_steps(self, run_id: str) -> list[StepInfo]:
        """The steps a run has reached, in the order they began (empty for
        an unknown run)."""
        return self._db.run(self._ops.get_steps(run_id))

    async def get_steps_async(self, run_id: str) -> list[StepInfo]:
        """`get_steps`, without blocking the event loop."""
        return await self._db.run_async(self._ops.get_steps(run_id))

    def get_waits(self, run_id: str) -> list[WaitInfo]:
        """What a sleeping or waiting run waits for (empty for others)."""
        return self._db.run(self._ops.get_waits(run_id))

    async def get_waits_async(self, run_id: str) -> list[WaitInfo]:
        """`get_waits`, without blocking the event loop."""
        return await self._db.run_async(self._ops.get_waits(run_id))

    def count_runs(self, since: datetime, *, cap: int = CAP) -> RunCounts:
        """Runs created since `since`, by function and status: of the newest
        `cap` at most (RunCounts.capped says when there were more)."""
        return self._db.run(self._ops.count_runs(since, cap))

    async def count_runs_async(self, since: datetime, *, cap: int = CAP) -> RunCounts:
        """`count_runs`, without blocking the event loop."""
        return await self._db.run_async(self._ops.count_runs(since, cap))

    def queue_summary(self, *, cap: int = CAP) -> QueueSummary:
        """Unfinished runs by function and status (of `cap` at most), and how
        long the oldest run ready to start has waited."""
        return self._db.run(self._ops.queue_summary(cap))

    async def queue_summary_async(self, *, cap: int = CAP) -> QueueSummary:
        """`queue_summary`, without blocking the event loop."""
        return await self._db.run_async(self._ops.queue_summary(cap))

    def list_functions(self) -> list[FunctionInfo]:
        """The functions workers have served (as the last one to start
        described them), by id: triggers, cron and its next tick, options,
        and when a worker serving it was last seen."""
        return self._db.run(self._ops.list_functions())

    async def list_functions_async(self) -> list[FunctionInfo]:
        """`list_functions`, without blocking the event loop."""
        return await self._db.run_async(self._ops.list_functions())

    def list_workers(self) -> list[WorkerInfo]:
        """Worker processes that are running, or stopped without saying so
        (`live` False: not seen within their lease) in the last day."""
        return self._db.run(self._ops.list_workers())

    async def list_workers_async(self) -> list[WorkerInfo]:
        """`list_workers`, without blocking the event loop."""
        return await self._db.run_async(self._ops.list_workers())

    def create_event_trigger(
        self, table: str, event: str, *, ops: Sequence[str] = ("insert",),
        columns: Sequence[str] | None = None, condition: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> None:
        """Send `event` for each row of `table` that a write (`ops`: insert,
        update, delete) touches and `condition` (an SQL expression over NEW,
        and OLD) holds for, in the writer's transaction, with `data` =
        {op, table, new, old} (the rows cut to `columns` if given). Runs start
        as for any send from SQL: for the functions workers have recorded.
        Replaces the table's triggers for `event`. With `conn=`, in the
        caller's transaction (a migration's)."""
        self._db.run(self._ops.create_event_trigger(table, event, ops, columns, condition), conn)

    def drop_event_trigger(
        self, table: str, event: str, *, conn: psycopg.Connection[Any] | None = None
    ) -> None:
        """Remove the triggers that send `event` for `table` (none is no error)."""
        self._db.run(self._ops.drop_event_trigger(table, event), conn)

    def list_event_triggers(self) -> list[EventTrigger]:
        """Every event trigger of this app's schema, one per table, event and op."""
        return self._db.run(self._ops.list_event_triggers())

    def cancel(self, run_id: str, *, actor: str | None = None) -> bool:
        """Cancel a run: at once if it is not running, else at its next step
        boundary. False if it is unknown or already finished. Once it has
        returned True, the run ends `cancelled` and starts no other step.
        Logged in `operator_audit` as done by `actor` (default: the database
        user)."""
        return self._db.run(self._ops.cancel(run_id, actor))

    async def cancel_async(self, run_id: str, *, actor: str | None = None) -> bool:
        """`cancel`, without blocking the event loop."""
        return await self._db.run_async(self._ops.cancel(run_id, actor))

    def cancel_runs(
        self, function: str | None = None, *, created_after: datetime | None = None,
        created_before: datetime | None = None, run_ids: Sequence[str] | None = None,
        actor: str | None = None,
    ) -> int:
        """Cancel every unfinished run of `function` created in
        [created_after, created_before) (open-ended where omitted), or those
        among `run_ids`, as `cancel` does each. Returns how many were
        cancelled or will be."""
        return self._db.run(self._ops.cancel_runs(
            function, created_after=created_after, created_before=created_before,
            run_ids=run_ids, actor=actor))

    async def cancel_runs_async(
        self, function: str | None = None, *, created_after: datetime | None = None,
        created_before: datetime | None = None, run_ids: Sequence[str] | None = None,
        actor: str | None = None,
    ) -> int:
        """`cancel_runs`, without blocking the event loop."""
        return await self._db.run_async(self._ops.cancel_runs(
            function, created_after=created_after, created_before=created_before,
            run_ids=run_ids, actor=actor))

    def replay(self, run_id: str, *, actor: str | None = None) -> str:
        """Start a new run of the same function with the same event(s); return its id."""
        return self._db.run(self._ops.replay(run_id, actor))

    async def replay_async(self, run_id: str, *, actor: str | None = None) -> str:
        """`replay`, without blocking the event loop."""
        return await self._db.run_async(self._ops.replay(run_id, actor))

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
        return self._db.run(self._ops.fork(run_id, from_step, data, actor))

    async def fork_async(
        self, run_id: str, from_step: str, data: dict[str, Any] | BaseModel | None = None, *,
        actor: str | None = None,
    ) -> str:
        """`fork`, without blocking the event loop."""
        return await self._db.run_async(self._ops.fork(run_id, from_step, data, actor))

    # -- health -------------------------------------------------------------

    def _threads_busy(self) -> tuple[int, int] | None:
        """For the metrics: this process's worker's executors (busy, all)."""
        worker = self._worker
        return None if worker is None else worker.threads_busy()

    def health(self, *, check_database: bool = True) -> Health:
        """For liveness and readiness probes: whether this process's worker
        threads are alive, the database answers (within connect_timeout;
        not asked with `check_database=False`, for a liveness probe that
        must answer at once), and the worker recorded its heartbeat within
        its lease."""
        error = None
        try:
            if check_database:
                self._db.on_own(self._store.database_now)
        except (DurableError, psycopg.Error) as exc:
            error = str(exc)
        worker = self._worker
        return judge(error, None if worker is None else worker.facts(),
                     self.lease.total_seconds())

    def doctor(self) -> list[Check]:
        """Check what hurts in production (schema version, durability
        settings, pooler, autovacuum, backlog, functions no worker serves,
        pruning, functions sends from SQL do not know yet), each with what to do."""
        with self._db.pooled() as conn:
            return diagnose(self._store, conn, list(self._functions))

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
        at = aware(as_of, "as_of", datetime.now(UTC)) if as_of is not None else None
        pruner = Pruner(self._store, self.dedupe_window)
        if not dry_run:
            with self.connection() as conn:
                self._record_policies(conn)
        with self._db.direct("prune holds a lock for its session") as conn:
            counts = pruner.prune(conn, at, dry_run=dry_run, progress=progress, wait=True)
        assert counts is not None
        return counts

    async def prune_async(
        self, as_of: datetime | None = None, *, dry_run: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """`prune`, in a thread of its own (it holds a session and a lock for
        as long as it works, on a connection of its own): the event loop goes on."""
        return await asyncio.to_thread(self.prune, as_of, dry_run=dry_run, progress=progress)

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


