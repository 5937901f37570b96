"""The only module that talks SQL.

Statements live in `sql/queries.sql` and migrations in `sql/migrations/`;
this module loads them once per schema and runs them on connections it is
given. It never opens, commits or closes a connection itself: callers own
their transactions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import RowFactory, namedtuple_row

from ._counts import QueueSummary, RunCounts
from ._events import Event, PreparedEvent
from ._network import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, USER_TIMEOUT_MS
from ._records import Checkpoint, ClaimedRow, DbTime, Finish, StepRecord, WaitSpec
from ._registry import EventTrigger, FunctionInfo, WorkerInfo
from ._runs import Run, StepInfo, WaitInfo
from .errors import ConfigurationError, NewerSchemaError

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
PARTITIONS_AHEAD = 1  # partitions of history made beyond the one that holds now


def is_transient(exc: BaseException) -> bool:
    """Whether a failed statement is worth another try: a lost connection,
    or a function dropped under it by a `migrate` that recreated the
    schema's functions or views meanwhile (nothing was written; the new
    ones are there). Postgres reports the latter as an internal error naming
    the object it no longer finds."""
    return isinstance(exc, psycopg.OperationalError) or (
        isinstance(exc, psycopg.errors.InternalError_)
        and any(text in str(exc) for text in _DROPPED_UNDER_US))


_DROPPED_UNDER_US = ("cache lookup failed", "could not open relation with OID")


def sql_dir() -> Path:
    """Where the SQL files are: inside the installed package, or the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError(f"pgdurable's SQL files are missing next to {here}")


def check_schema_name(schema: object) -> str:
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigurationError(
            f"schema {schema!r} is not a valid name: use lower-case letters, digits and "
            "underscores, starting with a letter or underscore, at most 48 characters"
        )
    return schema


def _events(more: list[dict[str, Any]] | None) -> list[Event]:
    if not more:
        return []
    return [Event.from_doc(e) for e in more]


def _event_json(e: PreparedEvent) -> str:
    ts = "null" if e.ts is None else f'"{e.ts.isoformat()}"'
    more = "" if e.trace_json is None and e.keys_json is None else \
        f",{e.trace_json or 'null'}{'' if e.keys_json is None else ',' + e.keys_json}"
    return f"[{json.dumps(e.id)},{json.dumps(e.name)},{e.data_json},{ts}{more}]"


def behind_pooler(server_port: int | None, client_port: int) -> bool:
    """Whether a connection reaches Postgres through a pooler: the server
    listens on another port than the one connected to (a guess: a pooler on
    the server's own port, or a proxy that keeps the port, goes unseen)."""
    return server_port is not None and server_port != client_port


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _send_params(
    events: Sequence[PreparedEvent], specs: str, dedupe_window: timedelta
) -> tuple[str, str, timedelta]:
    return "[" + ",".join(map(_event_json, events)) + "]", specs, dedupe_window


@contextmanager
def _autocommit(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """For statements that no transaction may hold (VACUUM), whatever the
    connection (the app's pool's, maybe) is set to."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        yield
    finally:
        conn.autocommit = autocommit


def _claimed(sent: float, rows: Iterable[Any]) -> list[ClaimedRow]:
    """Rows of the `claimed_run` type (read by name: a namedtuple_row
    cursor) as the worker takes them; the statement was sent at `sent`
    (monotonic)."""
    received = time.monotonic()
    return [
        ClaimedRow(
            id=str(r.id), token=r.lease_token, function_id=r.function_id, attempt=r.attempt,
            handler_attempts=r.handler_attempts, retries=r.retries,
            cancel_requested=r.cancel_requested,
            events=[Event(r.event_name, r.event_data, r.event_id, r.event_ts),
                    *_events(r.more_events)],
            traces=_traces(r.event_trace, r.more_events),
            journal=r.journal or {}, first_start=not r.resumed, due_at=r.due_at,
            started_at=r.started_at, clock=DbTime(r.now, sent, received))
        for r in rows
    ]


def _traces(first: dict[str, str] | None, more: list[dict[str, Any]] | None
            ) -> tuple[dict[str, str], ...]:
    """The trace contexts stored with a run's events (most runs: none)."""
    if more is None:
        return () if first is None else (first,)
    return tuple(t for t in (first, *(m.get("trace") for m in more)) if t)


def _step_json(s: StepRecord) -> str:
    """A journal entry as the JSON row `flush` reads (outputs are JSON already)."""
    return (f'["{s.run_id}",{s.token},{json.dumps(s.key)},{s.position},"{s.status}",'
            f'{s.output_json or "null"},{s.error_json or "null"},{s.attempts},'
            f'"{s.started_at.isoformat()}"]')


def _finish_json(f: Finish) -> str:
    available = "null" if f.available_at is None else f'"{f.available_at.isoformat()}"'
    return (f'["{f.run_id}",{f.token},"{f.status}",{f.output_json or "null"},'
            f'{f.error_json or "null"},{available},{_BOOL[f.retry]},{_BOOL[f.handler_failed]}]')


_BOOL = {True: "true", False: "false"}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str


@cache
def _query_texts() -> dict[str, str]:
    text = (sql_dir() / "queries.sql").read_text()
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


def _function_files() -> str:
    """sql/functions/*.sql, in name order, as one script."""
    return "\n".join(path.read_text() for path in sorted((sql_dir() / "functions").glob("*.sql")))


@cache
def functions_revision() -> tuple[int, str]:
    """The revision of sql/functions/, and the checksum recorded with it."""
    fields = dict(line.split(None, 1) for line in
                  (sql_dir() / "functions" / "REVISION").read_text().splitlines()
                  if line and not line.startswith("#"))
    return int(fields["revision"]), fields["sha256"].strip()


def functions_checksum() -> str:
    """The sha256 of sql/functions/*.sql as they are, to compare with REVISION's."""
    return hashlib.sha256(_function_files().encode()).hexdigest()


@cache
def _migration_files() -> tuple[tuple[int, str, str], ...]:
    """sql/migrations/: (version, name, text), in version order; read once."""
    found = []
    for path in sorted((sql_dir() / "migrations").iterdir()):
        match = _MIGRATION_FILE.match(path.name)
        if match:
            found.append((int(match[1]), match[2], path.read_text()))
    return tuple(found)


def _known_versions() -> list[int]:
    return [version for version, _, _ in _migration_files()]


def fresh_schema_ddl(conn: psycopg.Connection[Any]) -> str:
    """What `migrate` creates, as DDL (sql/schema.sql): a schema migrated in a
    transaction that is rolled back, so nothing is left behind. Headed by
    the server's major version, which the catalogs' rendering depends on."""
    major = conn.info.server_version // 10000
    with conn.transaction(force_rollback=True):
        store = Store(f"pgdurable_ddl_{os.getpid()}")
        store.migrate(conn)
        ddl = store.schema_ddl(conn)
    return (f"-- The schema that `migrate` creates, generated by `pgdurable schema > sql/schema.sql`\n"
            f"-- on PostgreSQL {major}: do not edit. tests/test_migrations.py fails when they differ.\n"
            f"-- The tables' history is in sql/migrations/, the functions' text in sql/functions/.\n\n"
            + ddl)


@dataclass(frozen=True, slots=True)
class Query(Generic[T]):
    """A statement of queries.sql with its parameters, and how to read its
    rows: data, so that a sync and an async connection run it alike
    (`Store.execute`, `Store.execute_async`) and each call of the
    management API is written once for both (_manage.py)."""

    name: str
    params: Any
    read: Callable[[list[Any]], T]
    prepare: bool = True  # False: never prepared (session setup, once per connection)
    by_name: bool = False  # rows as named tuples (a composite type's fields), not plain tuples


def _nothing(rows: list[Any]) -> None:
    return None


def _first(make: Callable[[Any], T]) -> Callable[[list[Any]], T | None]:
    """The first row, made into a T; None without rows."""
    return lambda rows: make(rows[0]) if rows else None


def _each(make: Callable[[Any], T]) -> Callable[[list[Any]], list[T]]:
    return lambda rows: [make(row) for row in rows]


class Store:
    """Statements bound to one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = check_schema_name(schema)
        self.channel = f"pgdurable_{schema}"
        quoted = sql.Identifier(schema).as_string(None)
        self._substitutions = {
            "{schema}": quoted,
            "{channel_ident}": sql.Identifier(self.channel).as_string(None),
            "{channel}": self.channel,
        }
        self._q = {name: self._render(body) for name, body in _query_texts().items()}
        # Statements are prepared (once per connection), except through a
        # transaction pooler, where the next transaction may be on another
        # server connection that never saw them.
        self.prepare = True
        # Whether the app's pooled connections carry pgdurable's statement
        # limits (`session_settings`), which user code's transactions lift.
        self.bounded = False

    def _render(self, text: str) -> str:
        for placeholder, value in self._substitutions.items():
            text = text.replace(placeholder, value)
        return text

    def _run(
        self, conn: psycopg.Connection[Any], name: str, params: Any = None,
        rows: RowFactory[Any] | None = None,
    ) -> psycopg.Cursor[Any]:
        """Execute statement `name` (prepared); `rows` reads its rows by name."""
        if rows is None:
            return conn.execute(self._q[name], params, prepare=self.prepare)
        return conn.cursor(row_factory=rows).execute(self._q[name], params, prepare=self.prepare)

    def execute(self, conn: psycopg.Connection[Any], query: Query[T]) -> T:
        """Run `query` on a sync connection, and read its rows."""
        cursor = conn.cursor(row_factory=namedtuple_row) if query.by_name else conn.cursor()
        cursor.execute(self._q[query.name], query.params, prepare=self.prepare and query.prepare)
        return query.read(cursor.fetchall() if cursor.description is not None else [])

    async def execute_async(self, conn: psycopg.AsyncConnection[Any], query: Query[T]) -> T:
        """Run `query` on an async connection, and read its rows."""
        cursor = conn.cursor(row_factory=namedtuple_row) if query.by_name else conn.cursor()
        await cursor.execute(self._q[query.name], query.params,
                             prepare=self.prepare and query.prepare)
        return query.read(await cursor.fetchall() if cursor.description is not None else [])

    # -- migrations -------------------------------------------------------

    def migrations(self) -> list[Migration]:
        return [Migration(v, n, self._render(t)) for v, n, t in _migration_files()]

    def functions_script(self) -> tuple[str, str]:
        """The schema's functions, triggers and views, as one script, and its checksum."""
        script = self._render(_function_files())
        return script, hashlib.sha256(script.encode()).hexdigest()

    def migrate(self, conn: psycopg.Connection[Any]) -> list[int]:
        """Apply missing migrations, and recreate the functions if they changed,
        in the caller's transaction, under a lock that serialises concurrent
        migrators of the same schema. Returns the versions applied."""
        self._run(conn, "migration_lock", (self.schema,))
        self._run(conn, "create_schema")
        self._run(conn, "create_version_table")
        self._run(conn, "create_functions_table")
        self._run(conn, "add_functions_revision")
        applied = {row[0] for row in self._run(conn, "applied_versions")}
        self._refuse_newer(conn, applied)
        pending = [m for m in self.migrations() if m.version not in applied]
        functions, checksum = self.functions_script()
        if not pending and self._functions_checksum(conn) == checksum:
            return []
        # Functions may depend on the tables a migration changes: drop them first.
        conn.execute(self._q["drop_functions"].encode())
        for migration in pending:
            conn.execute(migration.text.encode())
            self._run(conn, "record_version", (migration.version, migration.name))
        conn.execute(functions.encode())
        self._run(conn, "record_functions", (checksum, functions_revision()[0]))
        self._run(conn, "notify_migrated")  # running workers check they are not outdated
        return [m.version for m in pending]

    def newer_schema(self, conn: psycopg.Connection[Any]) -> str | None:
        """Why this library must leave the schema alone (a newer one migrated
        it), or None."""
        return self._newer(conn, {row[0] for row in self._run(conn, "applied_versions")})

    def _refuse_newer(self, conn: psycopg.Connection[Any], applied: set[int]) -> None:
        """NewerSchemaError if a newer library migrated this schema: this one
        must not run on its tables nor put older functions over its own."""
        if (why := self._newer(conn, applied)) is not None:
            raise NewerSchemaError(why)

    def _newer(self, conn: psycopg.Connection[Any], applied: set[int]) -> str | None:
        known = max(_known_versions())
        if applied and max(applied) > known:
            return (f"schema {self.schema!r} is at migration {max(applied)}, newer than this "
                    f"pgdurable's latest ({known}): upgrade pgdurable; it will not downgrade a schema")
        row = self._run(conn, "functions_revision").fetchone()
        ours = functions_revision()[0]
        if row is not None and row[0] is not None and row[0] > ours:
            return (f"schema {self.schema!r} has SQL functions of revision {row[0]}, newer than "
                    f"this pgdurable's ({ours}): upgrade pgdurable; it will not replace them")
        return None

    def _functions_checksum(self, conn: psycopg.Connection[Any]) -> str | None:
        row = self._run(conn, "functions_checksum").fetchone()
        return None if row is None else str(row[0])

    def schema_ddl(self, conn: psycopg.Connection[Any], *, as_schema: str = "pgdurable") -> str:
        """The schema as DDL read back from the catalogs (tables with their
        constraints, indexes, types, views, functions, triggers), in a
        stable order, with its name (and its channel's) written as `as_schema`."""
        parts = [f"-- {kind}\n\n" + "\n\n".join(
                     ddl for _, ddl in self._run(conn, f"ddl_{kind}", {"schema": self.schema}))
                 for kind in ("tables", "indexes", "types", "views", "functions", "triggers")]
        return "\n\n".join(parts).replace(self.schema, as_schema) + "\n"

    def is_migrated(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether the schema is as this library migrates it; NewerSchemaError
        if a newer library migrated it."""
        row = self._run(conn, "schema_exists", (f"{self.schema}.schema_functions",)).fetchone()
        if not row or not row[0]:
            return False
        applied = {r[0] for r in self._run(conn, "applied_versions")}
        self._refuse_newer(conn, applied)
        _, checksum = self.functions_script()
        return (all(version in applied for version in _known_versions())
                and self._functions_checksum(conn) == checksum)

    # -- events -----------------------------------------------------------

    def send_events(
        self,
        events: Sequence[PreparedEvent],
        specs: str,
        dedupe_window: timedelta,
        generated: bool = False,
    ) -> Query[None]:
        """Insert events and the runs they trigger: `specs` maps event names
        to the send specs of the functions they trigger, as JSON
        (_functions.specs_json). `generated` events (pgdurable's own) may
        use its reserved id namespace."""
        return Query("send_generated" if generated else "send_events",
                     _send_params(events, specs, dedupe_window), _nothing)

    def send_and_claim(
        self,
        events: Sequence[PreparedEvent],
        specs: str,
        dedupe_window: timedelta,
        worker_id: str, function_ids: Sequence[str], limit: int, lease: timedelta,
    ) -> Query[list[ClaimedRow]]:
        """`send_events`, and lease up to `limit` of the new runs of
        `function_ids` that are due now to the worker, in the same
        transaction. Run at once: its answer is dated from now."""
        sent = time.monotonic()  # earlier than the statement: a staler answer, never a fresher one
        return Query("send_and_claim", (*_send_params(events, specs, dedupe_window),
                                        worker_id, list(function_ids), limit, lease),
                     partial(_claimed, sent), by_name=True)

    # -- event triggers ---------------------------------------------------

    def table_exists(self, table: str) -> Query[bool]:
        return Query("table_exists", (table,), lambda rows: bool(rows[0][0]))

    def create_event_trigger(
        self, table: str, event: str, ops: Sequence[str], columns: Sequence[str] | None,
        condition: str | None,
    ) -> Query[None]:
        """Triggers sending `event` for the rows of `table` that writes touch
        (see create_event_trigger in sql/functions/15_sql_send.sql)."""
        return Query("create_event_trigger",
                     (table, event, list(ops), None if columns is None else list(columns),
                      condition), _nothing, prepare=False)

    def drop_event_trigger(self, table: str, event: str) -> Query[None]:
        return Query("drop_event_trigger", (table, event), _nothing, prepare=False)

    def list_event_triggers(self) -> Query[list[EventTrigger]]:
        return Query("list_event_triggers", None, _each(EventTrigger.from_row))

    # -- testing.execute -----------------------------------------------------

    def start_test_run(
        self, function_id: str, event: PreparedEvent, retries: int,
        options: dict[str, Any] | None, steps_json: str,
    ) -> Query[str]:
        """A run of `function_id` for `event`, whose journal holds the values
        `steps_json` gives in place of steps (see start_test_run)."""
        doc = f'{{"id": {json.dumps(event.id)}, "name": {json.dumps(event.name)}, ' \
              f'"data": {event.data_json}}}'
        return Query("start_test_run", (function_id, doc, retries, _json_or_null(options),
                                        steps_json), lambda rows: str(rows[0][0]))

    def elapse_test_run(self, run_id: str) -> Query[tuple[int, bool]]:
        """Make due now what the run and its children wait for in time: how
        many became due, and whether they are stuck (see elapse_test_run)."""
        return Query("elapse_test_run", (run_id,), lambda rows: (int(rows[0][0]), bool(rows[0][1])))

    # -- worker -----------------------------------------------------------

    def listen(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._q["listen"])

    def barrier(self, conn: psycopg.Connection[Any]) -> None:
        """A round trip on a LISTEN connection: notifications committed
        before it are received by the time it returns."""
        conn.execute(self._q["barrier"])

    def claim_runs(
        self, conn: psycopg.Connection[Any], worker_id: str, function_ids: Sequence[str],
        limit: int, lease: timedelta, due_from: datetime | None = None,
    ) -> list[ClaimedRow]:
        """Lease up to `limit` due runs, the oldest first; only those due
        at or after `due_from` when given."""
        return _claimed(time.monotonic(), self._run(
            conn, "claim_runs", (worker_id, list(function_ids), limit, lease, due_from),
            rows=namedtuple_row))

    def flush(
        self, conn: psycopg.Connection[Any], steps: Sequence[StepRecord],
        finishes: Sequence[Finish], probes: Sequence[tuple[str, int]] = (),
    ) -> Checkpoint:
        """Write journal entries and run transitions; learn which runs among
        the journaled and `probes` (run ids and lease tokens) were asked to
        cancel, or are no longer held."""
        sent = time.monotonic()
        row = self._run(conn, "flush", (
            "[" + ",".join(map(_step_json, steps)) + "]",
            "[" + ",".join(map(_finish_json, finishes)) + "]",
            [run_id for run_id, _ in probes], [token for _, token in probes],
        )).fetchone()
        assert row is not None
        return Checkpoint(frozenset(map(str, row[0])), frozenset(map(str, row[1])),
                          DbTime(row[2], sent, time.monotonic()))

    def hold_run(self, conn: psycopg.Connection[Any], run_id: str, token: int) -> bool | None:
        """In the caller's transaction: keep the run this claim's until it ends.
        Whether it was asked to cancel; None if the claim has lost it already."""
        row = self._run(conn, "hold_run", (run_id, token)).fetchone()
        return None if row is None else bool(row[0])

    def reset_role(self, conn: psycopg.Connection[Any]) -> None:
        """Back to the connection's own role until the transaction ends."""
        self._run(conn, "reset_role")

    def rls_context(
        self, conn: psycopg.Connection[Any], kind: str, tag: str | None, user_id: str | None,
        run_id: str | None, function_id: str | None, step_key: str | None, setting: str,
        value: str,
    ) -> None:
        """Audit an act-as or a bypass and set `setting` until the transaction ends."""
        self._run(conn, "rls_context",
                  (kind, tag, user_id, run_id, function_id, step_key, setting, value))

    def create_roles(self, conn: psycopg.Connection[Any], sender: str, worker: str) -> None:
        self._run(conn, "create_roles", (sender, worker))

    def heartbeat(
        self, conn: psycopg.Connection[Any], leases: Sequence[tuple[str, int]], lease: timedelta
    ) -> list[tuple[str, str]]:
        """Extend these leases: the runs among them asked to cancel
        (`cancel`) or no longer held (`lost`), as (run id, which) pairs."""
        rows = self._run(conn, "heartbeat", ([r for r, _ in leases], [t for _, t in leases], lease))
        return [(str(run_id), why) for run_id, why in rows]

    def next_due(self, conn: psycopg.Connection[Any], function_ids: Sequence[str]) -> datetime | None:
        row = self._run(conn, "next_due", (list(function_ids),)).fetchone()
        return None if row is None else row[0]

    # -- parking ----------------------------------------------------------

    def register_wait(
        self, conn: psycopg.Connection[Any], run_id: str, token: int, key: str, position: int,
        wait: WaitSpec,
    ) -> tuple[str, dict[str, Any] | None]:
        """Start waiting: ('matched', event doc), or ('parked' | 'lost' | 'cancelled', None)."""
        row = self._run(conn, "register_wait", (
            run_id, token, key, position, wait.names, wait.match_path, wait.match_value_json,
            wait.condition, wait.condition_vars_json, wait.expires,
        )).fetchone()
        assert row is not None
        return row[0], row[1]

    def invoke_child(
        self, conn: psycopg.Connection[Any], run_id: str, token: int, key: str, position: int,
        function_id: str, retries: int, data_json: str, expires: datetime | None,
        options: dict[str, Any], trace_json: str | None = None,
    ) -> str:
        """Start a child run and park the parent until it ends: 'started', or
        'lost' (the lease) or 'cancelled' (the parent was asked to), starting
        nothing. `trace_json`: the parent's span context, for the child to link to."""
        row = self._run(conn, "invoke_child", (
            run_id, token, key, position, function_id, retries, data_json, expires,
            json.dumps(options), trace_json,
        )).fetchone()
        assert row is not None
        return str(row[0])

    # -- failure handlers and schedules ------------------------------------

    def register_failure_handlers(
        self, conn: psycopg.Connection[Any], functions: Sequence[str],
        handlers: Sequence[tuple[str, str, int]],
    ) -> None:
        """Record (function id, handler function id, retries) for these functions."""
        self._run(conn, "register_failure_handlers", {
            "functions": list(functions), "handled": [h[0] for h in handlers],
            "handlers": [h[1] for h in handlers], "retries": [h[2] for h in handlers]})

    def register_functions(
        self, conn: psycopg.Connection[Any], worker_id: str, described: Sequence[dict[str, Any]]
    ) -> None:
        """Record functions as _registry.describe gives them."""
        self._run(conn, "register_functions", {"worker": worker_id,
                                               "functions": json.dumps(list(described))})

    def record_send_settings(
        self, conn: psycopg.Connection[Any], dedupe_window: timedelta, max_event_bytes: int
    ) -> None:
        """The app's limits for events, as sends from SQL apply them."""
        self._run(conn, "record_send_settings", (dedupe_window, max_event_bytes))

    def worker_seen(self, conn: psycopg.Connection[Any], worker: dict[str, Any]) -> None:
        """A worker's heartbeat: its row (id, host, pid, version, functions,
        threads, lease, runs_held; starting: also drop the long dead)."""
        self._run(conn, "worker_seen", worker)

    def worker_stopped(self, conn: psycopg.Connection[Any], worker_id: str) -> None:
        self._run(conn, "worker_stopped", (worker_id,))

    def list_functions(self) -> Query[list[FunctionInfo]]:
        return Query("list_functions", None, _each(FunctionInfo.from_row))

    def list_workers(self) -> Query[list[WorkerInfo]]:
        return Query("list_workers", None, _each(WorkerInfo.from_row))

    def register_schedules(
        self, conn: psycopg.Connection[Any], functions: Sequence[str],
        schedules: Sequence[tuple[str, str, str, datetime]],
    ) -> None:
        """Record (function id, cron, time zone, next tick) for these functions."""
        self._run(conn, "register_schedules", {
            "functions": list(functions), "scheduled": [x[0] for x in schedules],
            "crons": [x[1] for x in schedules], "zones": [x[2] for x in schedules],
            "next_ticks": [x[3] for x in schedules]})

    def due_schedules(
        self, conn: psycopg.Connection[Any], function_ids: Sequence[str]
    ) -> list[tuple[str, datetime, datetime]]:
        """(function id, due tick, the database's now) of each due schedule,
        locked until the transaction ends."""
        return [(r[0], r[1], r[2]) for r in self._run(conn, "due_schedules", (list(function_ids),))]

    def set_next_tick(self, conn: psycopg.Connection[Any], function_id: str, tick: datetime) -> None:
        self._run(conn, "set_next_tick", (tick, function_id))

    def next_tick(self, conn: psycopg.Connection[Any], function_ids: Sequence[str]) -> datetime | None:
        row = self._run(conn, "next_tick", (list(function_ids),)).fetchone()
        return None if row is None else row[0]

    def start_due_batches(
        self, conn: psycopg.Connection[Any], function_ids: Sequence[str]
    ) -> datetime | None:
        """Start the runs of batches whose timeout passed; when the next is due."""
        row = self._run(conn, "start_due_batches", (list(function_ids),)).fetchone()
        return None if row is None else row[0]

    def start_due_debounces(
        self, conn: psycopg.Connection[Any], function_ids: Sequence[str], window: timedelta
    ) -> datetime | None:
        """Start the runs of debounces that came due (admitted then, with
        `window` for idempotency); when the next is due."""
        row = self._run(conn, "start_due_debounces", (list(function_ids), window)).fetchone()
        return None if row is None else row[0]

    # -- management -------------------------------------------------------

    def cancel_run(self, run_id: str) -> Query[bool]:
        return Query("cancel_run", (run_id,), lambda rows: bool(rows and rows[0][0]))

    def cancel_runs(self, query: dict[str, Any]) -> Query[int]:
        """Cancel as `query` (function, since, until; or runs; and who) selects."""
        return Query("cancel_runs", query, lambda rows: int(rows[0][0]))

    def get_run(self, run_id: str) -> Query[Run | None]:
        return Query("get_run", (run_id,), _first(Run.from_row))

    def runs_for_event(self, event_id: str) -> Query[list[Run]]:
        return Query("runs_for_event", {"event": event_id}, _each(Run.from_row))

    def list_runs(self, query: dict[str, Any]) -> Query[list[Run]]:
        """Runs as `query` (the parameters of list_runs, by name) selects them."""
        return Query("list_runs", query, _each(Run.from_row))

    def run_steps(self, run_id: str) -> Query[list[StepInfo]]:
        return Query("run_steps", (run_id,), _each(StepInfo.from_row))

    def run_waits(self, run_id: str) -> Query[list[WaitInfo]]:
        return Query("run_waits", (run_id,), _each(WaitInfo.from_row))

    def count_runs(self, since: datetime, cap: int) -> Query[RunCounts]:
        return Query("count_runs", {"since": since, "cap": cap},
                     lambda rows: RunCounts.from_rows(rows, cap))

    def queue_summary(self, cap: int) -> Query[QueueSummary]:
        return Query("queue_summary", {"cap": cap}, lambda rows: QueueSummary(
            RunCounts.from_rows(rows, cap), rows[0][3] if rows else None))

    def server_port(self) -> Query[int | None]:
        """The port the server behind this connection listens on (None over a socket)."""
        return Query("server_port", None,
                     lambda rows: None if not rows or rows[0][0] is None else int(rows[0][0]),
                     prepare=False)

    def session_settings(self, *, bounded: bool) -> Query[None]:
        """On a new connection of our own straight to Postgres (autocommit):
        the server's keepalives and, if `bounded`, our statement limits."""
        return Query("session_settings", {
            "idle": str(KEEPALIVE_IDLE), "interval": str(KEEPALIVE_INTERVAL),
            "count": str(KEEPALIVE_COUNT), "user_timeout": str(USER_TIMEOUT_MS),
            "bounded": bounded}, _nothing, prepare=False)

    def unbounded(self, conn: psycopg.Connection[Any]) -> None:
        """In a transaction that runs user code: lift our statement limits."""
        if (lift := self.lift_limits()) is not None:
            self.execute(conn, lift)

    def lift_limits(self) -> Query[None] | None:
        """What `unbounded` runs, if there are limits to lift."""
        return Query("unbounded", None, _nothing, prepare=False) if self.bounded else None

    def doctor_facts(self, conn: psycopg.Connection[Any]) -> Any:
        """The facts `doctor` judges, by name (see queries.sql)."""
        return self._run(conn, "doctor_facts", rows=namedtuple_row).fetchone()

    def replay_run(
        self, run_id: str, retries: int, options: dict[str, Any] | None,
    ) -> Query[str | None]:
        return Query("replay_run", {
            "run": run_id, "retries": retries, "options": _json_or_null(options)},
            _first(lambda row: str(row[0])))

    def fork_run(
        self, run_id: str, from_step: str, retries: int,
        options: dict[str, Any] | None, event: dict[str, Any] | None,
    ) -> Query[str]:
        """Raises psycopg.errors.NoDataFound for an unknown run or step."""
        return Query("fork_run", {
            "run": run_id, "from_step": from_step, "retries": retries,
            "options": _json_or_null(options), "event": _json_or_null(event)},
            lambda rows: str(rows[0][0]))

    def audit(
        self, action: str, run_ids: Sequence[str], who: str | None,
        details: Sequence[dict[str, Any] | None] | None = None,
    ) -> Query[None]:
        """Log operator actions; `who` None: the database user."""
        details = details or [None] * len(run_ids)
        return Query("audit", {"action": action, "runs": list(run_ids), "who": who,
                               "details": [_json_or_null(d) for d in details]}, _nothing)

    def registered_retries(self, function_id: str) -> Query[int | None]:
        """The retries of a function as the last worker serving it recorded them."""
        return Query("registered_retries", (function_id,), _first(lambda row: int(row[0])))

    def event(self, event_id: str) -> Query[Event | None]:
        return Query("event", (event_id,), _first(lambda row: Event.from_doc(row[0])))

    def list_events(self, query: dict[str, Any]) -> Query[list[Event]]:
        """Events as `query` (the parameters of list_events, by name) selects them."""
        return Query("list_events", query, _each(lambda row: Event.from_doc(row[0])))

    # -- retention (sql/functions/13_retention.sql) --------------------------

    def record_retention(
        self, conn: psycopg.Connection[Any], functions: Sequence[str],
        policies: dict[str, list[timedelta | None]],
    ) -> None:
        """Record retention policies: per function id ('' the app's), each
        status's keep (and 'audit'), None for forever."""
        self._run(conn, "record_retention", {"functions": list(functions), **policies})

    def add_partitions(self, conn: psycopg.Connection[Any], ahead: int) -> int:
        return int(self._one(conn, "add_partitions", (ahead,)))

    def close_partitions(self, conn: psycopg.Connection[Any], as_of: datetime) -> list[str]:
        return list(self._one(conn, "close_partitions", (as_of,)))

    def history_partitions(
        self, conn: psycopg.Connection[Any], as_of: datetime
    ) -> list[tuple[str, bool]]:
        """(suffix, whether closed: its day is over) of the partitions that
        may hold runs expired at `as_of`, oldest first, 'kept' (the default
        one) last."""
        return [(r[0], r[1]) for r in self._run(conn, "history_partitions", (as_of,))]

    def partition_expired(
        self, conn: psycopg.Connection[Any], suffix: str, as_of: datetime
    ) -> tuple[int, int]:
        """How many runs a partition holds, and how many have expired at `as_of`."""
        total, expired = self._row(conn, "partition_expired", (suffix, as_of))
        return int(total), int(expired)

    def drop_partition(self, conn: psycopg.Connection[Any], suffix: str, as_of: datetime) -> int:
        return int(self._one(conn, "drop_partition", (suffix, as_of)))

    def delete_expired(
        self, conn: psycopg.Connection[Any], suffix: str, as_of: datetime, after: str | None,
        *, limit: int,
    ) -> tuple[int, str | None]:
        """Of the next `limit` runs of a partition after run id `after`, delete
        those expired at `as_of`: how many, and the last id looked at (None
        once past the last)."""
        deleted, last = self._row(conn, "delete_expired", (suffix, as_of, after, limit))
        return int(deleted), None if last is None else str(last)

    def delete_events(
        self, conn: psycopg.Connection[Any], as_of: datetime, dedupe_window: timedelta,
        after: tuple[datetime, str] | None, limit: int,
    ) -> tuple[int, tuple[datetime, str] | None]:
        """Of the next `limit` events received before the cutoff, after
        (received_at, id) `after`, delete those no run needs: how many, and
        the last looked at (None once past the last)."""
        at, event_id = after or (None, None)
        deleted, last_at, last_id = self._row(conn, "delete_events",
                                              (as_of, dedupe_window, at, event_id, limit))
        return int(deleted), None if last_at is None else (last_at, last_id)

    def count_events(
        self, conn: psycopg.Connection[Any], as_of: datetime, dedupe_window: timedelta
    ) -> int:
        return int(self._one(conn, "count_events", (as_of, dedupe_window)))

    def delete_audit(self, conn: psycopg.Connection[Any], as_of: datetime, limit: int) -> int:
        return int(self._one(conn, "delete_audit", (as_of, limit)))

    def delete_bookkeeping(self, conn: psycopg.Connection[Any], as_of: datetime) -> tuple[int, int]:
        """Expired idempotency keys and rate-limit logs at rest: how many of each went."""
        keys, rate_limits = self._row(conn, "delete_bookkeeping", (as_of,))
        return int(keys), int(rate_limits)

    def log_prune(
        self, conn: psycopg.Connection[Any], started: datetime, as_of: datetime, removed_json: str,
        next_due: datetime | None,
    ) -> None:
        self._run(conn, "log_prune", (started, as_of, removed_json, next_due))

    def prune_lock(self, conn: psycopg.Connection[Any], wait: bool) -> bool:
        """Take the prune lock for the session: whether it was free, or after
        its holder lets go (`wait`)."""
        return bool(self._one(conn, "prune_lock", (wait,)))

    def last_prune(self, conn: psycopg.Connection[Any]) -> datetime | None:
        """When the last prune finished, or None."""
        result: datetime | None = self._one(conn, "last_prune")
        return result

    def prune_unlock(self, conn: psycopg.Connection[Any]) -> None:
        self._run(conn, "prune_unlock")

    def vacuum_history(self, conn: psycopg.Connection[Any], cost_delay: str = "0") -> None:
        """VACUUM the tables prune deletes from, sleeping `cost_delay` at
        each cost limit's worth of work as autovacuum does (2ms), or never
        ("0", VACUUM's own default). A role that does not own them gets a
        warning from Postgres, no error."""
        with _autocommit(conn):
            self._run(conn, "vacuum_cost_delay", (cost_delay,))
            try:
                conn.execute(self._q["vacuum_history"].encode())
            finally:
                conn.execute(self._q["reset_vacuum_cost_delay"].encode())

    def hot_dead_tuples(self, conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
        """Dead and live row versions of the hot tables (queue, waits) that
        this role may VACUUM."""
        return {name: (dead, live) for name, dead, live in self._run(conn, "hot_dead_tuples")}

    def vacuum_queue(self, conn: psycopg.Connection[Any]) -> None:
        """VACUUM the hot tables."""
        with _autocommit(conn):
            conn.execute(self._q["vacuum_queue"].encode())

    def lock_timeout(self, conn: psycopg.Connection[Any], timeout: str) -> None:
        """Give up waiting for locks after `timeout`, until the transaction ends."""
        self._run(conn, "lock_timeout", (timeout,))

    def database_now(self, conn: psycopg.Connection[Any]) -> datetime:
        result: datetime = self._one(conn, "database_now")
        return result

    def _row(self, conn: psycopg.Connection[Any], name: str, params: Any = None) -> Any:
        """The one row that statement `name` returns."""
        row = self._run(conn, name, params).fetchone()
        assert row is not None
        return row

    def _one(self, conn: psycopg.Connection[Any], name: str, params: Any = None) -> Any:
        """The single value that statement `name` returns."""
        return self._row(conn, name, params)[0]
