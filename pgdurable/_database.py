"""An app's connections to Postgres, and the drivers of its operations.

The sync pool (the app's, or one given) serves everything; an async pool
(psycopg-pool's AsyncConnectionPool) opens on the first async call, on the
event loop making it. `run` and `run_async` do what an operation of
_manage.py asks: each query on a pooled connection of its own (tried again
while it may not have run) or in the caller's transaction (`conn=`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from . import _serde as serde
from ._manage import Atomic, Op, Pause, Send
from ._network import connect_direct, own_conninfo
from ._records import ClaimedRow
from ._store import Query, Store, behind_pooler, is_transient
from .errors import ConfigurationError, DurableError, MigrationError, UnavailableError

if TYPE_CHECKING:
    from ._worker import Worker

log = logging.getLogger("pgdurable")

T = TypeVar("T")

_SWAPPED_TRIES = 5  # a statement's tries while migrates swap the functions under it, back to back
# Keyword arguments of psycopg.connect() that are not libpq parameters.
_PSYCOPG_CONNECT_ARGS = frozenset({"autocommit", "prepare_threshold", "context", "row_factory",
                                   "cursor_factory"})
_WHERE = ("host", "hostaddr", "port", "dbname", "user")


class Database:
    """The connections of one app (see the module's docstring)."""

    def __init__(
        self, store: Store, *, dsn: str | None, pool: ConnectionPool[Any] | None,
        async_pool: AsyncConnectionPool[Any] | None, pool_size: int, async_pool_size: int,
        listen_dsn: str | None, connect_timeout: float, dedupe_window: timedelta,
    ) -> None:
        self._store = store
        self._dedupe_window = dedupe_window
        self.connect_timeout = connect_timeout
        self._dsn = dsn
        self._pool_size = pool_size
        self._async_pool_size = async_pool_size
        self.listen_dsn = listen_dsn
        # Whether the pool's connections go through a transaction pooler
        # (PgBouncer): said by listen_dsn, else found on the first connection.
        self._pooler: bool | None = True if listen_dsn is not None else None
        store.prepare = listen_dsn is None
        self._owns_pool = pool is None
        self.pool: ConnectionPool[Any] = pool or self._new_pool()
        self._pool_opened = False
        self._open_lock = threading.Lock()
        self._owns_async_pool = async_pool is None
        self._async_pool = async_pool
        self._async_opening: asyncio.Task[None] | None = None  # its open(), on its loop
        self._async_guard: asyncio.Task[None] | None = None  # closes it as its loop ends
        self.worker: Worker | None = None  # this process's, which may start sent runs at once

    # -- where connections lead ---------------------------------------------

    @property
    def conninfo(self) -> str:
        """The connection string of the pool, for connections of our own (LISTEN)."""
        pool = self.pool
        conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
        kwargs = pool.kwargs() if callable(pool.kwargs) else pool.kwargs
        extra = {k: v for k, v in (kwargs or {}).items()  # libpq parameters only
                 if isinstance(v, str | int) and not isinstance(v, bool)
                 and k not in _PSYCOPG_CONNECT_ARGS}
        return make_conninfo(conninfo, **extra)

    @property
    def direct_conninfo(self) -> str | None:
        """Where session-scoped work goes (LISTEN, pruning's lock and VACUUM
        settings): `listen_dsn` if given, else the pool's connection string
        unless that goes through a pooler (None: that work is not done)."""
        if self.listen_dsn is not None:
            return self.listen_dsn
        if self._pooler is None:
            with self.pooled():
                pass  # the first connection finds out
        return None if self._pooler else self.conninfo

    def _learn_pooler(self, server_port: int | None, conn: Any) -> None:
        """On the first connection: whether it goes through a transaction
        pooler, one that hands each transaction a server connection of its
        own, where a statement prepared in one is unknown in the next, a
        session's LISTEN hears nothing, and a session's lock or setting
        stays behind for the next client. Then prepare nothing."""
        if self._pooler is None:
            self._pooler = behind_pooler(server_port, conn.info.port)
            self._store.prepare = not self._pooler
            if self._pooler:
                log.warning("Postgres is reached through a pooler (server port %s, ours %s): no "
                            "prepared statements; workers poll for work instead of LISTEN and "
                            "do not prune, unless Durable(listen_dsn=...) names a direct "
                            "connection for that", server_port, conn.info.port)
        if self._pooler:
            conn.prepare_threshold = None

    # -- the sync pool --------------------------------------------------------

    def _new_pool(self) -> ConnectionPool[Any]:
        assert self._dsn is not None
        return ConnectionPool(own_conninfo(self._dsn, self.connect_timeout), open=False,
                              min_size=1, max_size=self._pool_size,
                              kwargs={"autocommit": True}, configure=self._configure,
                              name=f"pgdurable-{self._store.schema}")

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Setup of the connections of pools pgdurable creates: fast jsonb
        parsing, and no prepared statements through a pooler."""
        set_json_loads(serde.loads, conn)
        self._through_pooler(conn)
        if not self._pooler:  # a pooler keeps no session settings
            self._store.execute(conn, self._store.session_settings(bounded=True))
            self._store.bounded = True

    def _through_pooler(self, conn: psycopg.Connection[Any]) -> None:
        port = None if self._pooler is not None else self._store.execute(
            conn, self._store.server_port())
        self._learn_pooler(port, conn)

    @contextmanager
    def pooled(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection as it is: in autocommit if the pool is ours, so a
        single statement (all pgdurable needs, mostly) is one round trip.
        UnavailableError if none comes within `timeout` (default:
        connect_timeout) or the connection breaks."""
        if self._owns_pool and not self._pool_opened:
            with self._open_lock:
                if not self._pool_opened:
                    self.pool.open(wait=False)  # connects in the background, retrying
                    self._pool_opened = True
        stack = ExitStack()
        try:
            conn = stack.enter_context(self.pool.connection(
                timeout=self.connect_timeout if timeout is None else timeout))
        except PoolTimeout:
            raise self._unreachable(self.pool.max_size) from None
        with stack, translated_errors(self._store.schema, conn):
            if not self._owns_pool:  # ours are set up as they connect
                self._through_pooler(conn)
            yield conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction that commits when the block exits
        (and rolls back if it raises)."""
        with self.pooled() as conn, conn.transaction():
            self._store.unbounded(conn)  # the caller's code runs in it
            yield conn

    @contextmanager
    def direct(self, why: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own straight to Postgres (autocommit), for
        work that needs a session: `why`, said if there is none."""
        direct = self.direct_conninfo
        if direct is None:
            raise ConfigurationError(f"{why}, which a pooler does not keep: give "
                                     "Durable(listen_dsn=...) a direct DSN")
        try:
            conn = connect_direct(direct, self.connect_timeout, self._store)
        except psycopg.OperationalError as exc:
            raise UnavailableError(f"cannot connect to Postgres at {redacted(direct)}: "
                                   f"{str(exc).strip()}") from None
        with conn, translated_errors(self._store.schema):
            yield conn

    def on_own(self, statement: Callable[[psycopg.Connection[Any]], T]) -> T:
        """One statement on a pooled connection (autocommit), tried again
        while it may not have run: its connection broke (Postgres restarted,
        the network failed; UnavailableError once connect_timeout has passed),
        or a `migrate` recreated the functions under it (up to _SWAPPED_TRIES
        times). Only for statements safe to repeat: reads, and sends (an
        event id already stored is skipped, so a send that landed is not
        repeated)."""
        retrying = _Retrying(self.connect_timeout)
        while True:
            try:
                with self.pooled(retrying.remaining()) as own:
                    return statement(own)
            except (UnavailableError, pg_errors.InternalError_) as exc:
                pause = retrying.pause(exc)
                if pause is None:
                    raise
            time.sleep(pause)

    def close(self) -> None:
        """Close the pools this app created (a new one opens if it is used again)."""
        if self._owns_pool and self._pool_opened:
            with self._open_lock:
                self.pool.close()
                self.pool = self._new_pool()
                self._pool_opened = False
        self._close_async_pool()

    # -- the async pool ---------------------------------------------------------

    def _new_async_pool(self) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(
            own_conninfo(self.conninfo, self.connect_timeout), open=False, min_size=1,
            max_size=self._async_pool_size, kwargs={"autocommit": True},
            configure=self._configure_async, name=f"pgdurable-{self._store.schema}-async")

    async def _configure_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """`_configure`, for the connections of the async pool."""
        set_json_loads(serde.loads, conn)
        await self._through_pooler_async(conn)
        if not self._pooler:
            await self._store.execute_async(conn, self._store.session_settings(bounded=True))

    async def _through_pooler_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        port = None if self._pooler is not None else await self._store.execute_async(
            conn, self._store.server_port())
        self._learn_pooler(port, conn)

    async def _opened_async_pool(self) -> AsyncConnectionPool[Any]:
        """The async pool: one given, or ours, opened on the first call on
        this event loop. A pool opened on a loop that has closed since (one
        `asyncio.run` after another) is replaced; one in use on another
        running loop is not shared."""
        loop = asyncio.get_running_loop()
        with self._open_lock:
            if not self._owns_async_pool:
                assert self._async_pool is not None
                return self._async_pool
            opening = self._async_opening
            if opening is not None and opening.get_loop() is not loop:
                if not opening.get_loop().is_closed():
                    raise DurableError(
                        "this app's async pool is in use on another event loop: call "
                        "`await app.aclose()` there first, or give each loop its own Durable")
                opening = None  # that loop is gone, and its connections with it
            if opening is None:
                self._async_pool = self._new_async_pool()
                opening = self._async_opening = loop.create_task(
                    self._async_pool.open(wait=False))
                self._async_guard = loop.create_task(_close_at_shutdown(self._async_pool))
            pool = self._async_pool
        await opening
        assert pool is not None
        return pool

    @asynccontextmanager
    async def pooled_async(
        self, timeout: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """`pooled`, from the async pool."""
        pool = await self._opened_async_pool()
        stack = AsyncExitStack()
        try:
            conn = await stack.enter_async_context(pool.connection(
                timeout=self.connect_timeout if timeout is None else timeout))
        except PoolTimeout:
            raise self._unreachable(pool.max_size) from None
        async with stack:
            with translated_errors(self._store.schema, conn):
                if not self._owns_async_pool:  # ours are set up as they connect
                    await self._through_pooler_async(conn)
                yield conn

    @asynccontextmanager
    async def connection_async(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """`connection`, from the async pool."""
        async with self.pooled_async() as conn, conn.transaction():
            if (lift := self._store.lift_limits()) is not None:
                await self._store.execute_async(conn, lift)  # the caller's code runs in it
            yield conn

    async def on_own_async(self, query: Query[T]) -> T:
        """`on_own`, on the async pool."""
        retrying = _Retrying(self.connect_timeout)
        while True:
            try:
                async with self.pooled_async(retrying.remaining()) as own:
                    return await self._store.execute_async(own, query)
            except (UnavailableError, pg_errors.InternalError_) as exc:
                pause = retrying.pause(exc)
                if pause is None:
                    raise
            await asyncio.sleep(pause)

    async def aclose(self) -> None:
        """Close the async pool this app created (a new one opens if it is
        used again), on the event loop it runs on."""
        pool, _ = self._forget_async_pool()
        if pool is not None:
            await pool.close()

    def _close_async_pool(self) -> None:
        """From sync code (`app.stop()`): close our async pool on its loop
        if that still runs in another thread; schedule it if it is this
        thread's; forget it if the loop has closed."""
        pool, loop = self._forget_async_pool()
        if pool is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(pool.close())
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(pool.close(), loop).result(self.connect_timeout)

    def _forget_async_pool(
        self,
    ) -> tuple[AsyncConnectionPool[Any] | None, asyncio.AbstractEventLoop | None]:
        """Our async pool and its loop, no longer the app's (to close them);
        (None, None) if there is none of ours."""
        with self._open_lock:
            pool, opening, guard = self._async_pool, self._async_opening, self._async_guard
            if not self._owns_async_pool or pool is None or opening is None:
                return None, None
            self._async_pool = self._async_opening = self._async_guard = None
        if guard is not None and not guard.get_loop().is_closed():
            guard.get_loop().call_soon_threadsafe(guard.cancel)
        return pool, opening.get_loop()

    def _unreachable(self, size: int) -> UnavailableError:
        return UnavailableError(
            f"cannot connect to Postgres at {redacted(self.conninfo)} within "
            f"{self.connect_timeout} s (unreachable, or all {size} pooled connections busy)")

    # -- the drivers of operations ----------------------------------------------

    def run(self, op: Op[T], conn: psycopg.Connection[Any] | None = None) -> T:
        """Do what `op` asks, on this app's pool or in the caller's
        transaction `conn`; what a step raises is raised in `op`."""
        outcome: tuple[Any, BaseException | None] = (None, None)
        while True:
            step = _advance(op, outcome)
            if isinstance(step, _Done):
                return step.value  # type: ignore[no-any-return]
            try:
                outcome = (self._do(step, conn), None)
            except Exception as exc:
                outcome = (None, exc)

    def _do(self, step: Any, conn: psycopg.Connection[Any] | None) -> Any:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        if isinstance(step, Atomic):
            if conn is not None:
                with conn.transaction():
                    return self.run(step.op, conn)
            with self.connection() as own:
                return self.run(step.op, own)
        if isinstance(step, Send) and conn is None:
            return self.run(self._send_own(step))
        query = self._sending(step) if isinstance(step, Send) else step
        if conn is None:
            return self.on_own(partial(self._store.execute, query=query))
        with translated_errors(self._store.schema):
            return self._store.execute(conn, query)

    def _send_own(self, send: Send) -> Op[None]:
        """Send on a pooled connection (either driver); this process's worker,
        if any, starts what it can of the new runs at once (Worker.eager_start)."""
        worker = self.worker
        eager = None if worker is None else worker.eager_start(send.events, send.specs, send.plain)
        if eager is None:
            yield self._sending(send)
            return
        claimed: list[ClaimedRow] = []
        try:
            claimed = yield eager.query
        finally:
            eager.adopt(claimed)

    def _sending(self, send: Send) -> Query[None]:
        return self._store.send_events(send.events, send.specs, self._dedupe_window,
                                       send.generated)

    async def run_async(self, op: Op[T], conn: psycopg.AsyncConnection[Any] | None = None) -> T:
        """`run`, on the async pool or the caller's async `conn`."""
        outcome: tuple[Any, BaseException | None] = (None, None)
        while True:
            step = _advance(op, outcome)
            if isinstance(step, _Done):
                return step.value  # type: ignore[no-any-return]
            try:
                outcome = (await self._do_async(step, conn), None)
            except Exception as exc:
                outcome = (None, exc)

    async def _do_async(self, step: Any, conn: psycopg.AsyncConnection[Any] | None) -> Any:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Atomic):
            if conn is not None:
                async with conn.transaction():
                    return await self.run_async(step.op, conn)
            async with self.connection_async() as own:
                return await self.run_async(step.op, own)
        if isinstance(step, Send) and conn is None:
            return await self.run_async(self._send_own(step))
        query = self._sending(step) if isinstance(step, Send) else step
        if conn is None:
            return await self.on_own_async(query)
        with translated_errors(self._store.schema):
            return await self._store.execute_async(conn, query)


async def _close_at_shutdown(pool: AsyncConnectionPool[Any]) -> None:
    """Wait until cancelled, then close `pool` if it is still open: when the
    loop ends (asyncio.run cancels what is left) before `app.aclose()`. The
    pool's own tasks survive a cancel, by design, and would keep the loop
    from ending."""
    try:
        await asyncio.Event().wait()
    finally:
        if not pool.closed:
            await pool.close(timeout=5.0)


class _Done:
    """An operation's end, with its result."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _advance(op: Op[Any], outcome: tuple[Any, BaseException | None]) -> Any:
    """The operation's next step, given the last one's result or error
    (raised inside it); _Done once it returns."""
    value, error = outcome
    try:
        return op.throw(error) if error is not None else op.send(value)
    except StopIteration as stop:
        return _Done(stop.value)


class _Retrying:
    """When a statement on a connection of our own is tried again (see
    Database.on_own): pauses doubling from 10 ms to 1 s."""

    def __init__(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout
        self._delay = 0.01
        self._swapped = 0

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def pause(self, exc: BaseException) -> float | None:
        """The pause before the next try after `exc`; None: raise it."""
        if isinstance(exc, pg_errors.InternalError_):
            self._swapped += 1
            if not is_transient(exc) or self._swapped >= _SWAPPED_TRIES:
                return None
            return 0.0  # the new functions are there already
        if time.monotonic() + self._delay >= self._deadline:
            return None
        delay, self._delay = self._delay, min(self._delay * 2, 1.0)
        return delay


def redacted(conninfo: str) -> str:
    """Where a connection string leads, for messages: no password, no tuning."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(unparsable conninfo)"
    return make_conninfo(**{k: str(v) for k, v in params.items() if k in _WHERE})


@contextmanager
def translated_errors(schema: str, own: Any = None) -> Iterator[None]:
    """Turn 'relation/function does not exist' into a migration hint and,
    on a connection of our `own` (sync or async), its breaking into
    UnavailableError."""
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
