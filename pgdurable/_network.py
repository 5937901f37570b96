"""pgdurable's own connections on an unreliable network.

A connection whose network path dies without a word (a host cut off, a
failover, a firewall dropping idle flows) looks alive to both ends until TCP
gives up, after two hours of silence by the kernel's defaults. Connections
that pgdurable opens itself (its pool's, the listener's, the pruner's)
notice it in seconds instead: libpq's keepalives and `tcp_user_timeout` on
our end, the same settings on the server's end (`Store.session_settings`),
and, for the listener, a watchdog on its round trips.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import PoolTimeout

if TYPE_CHECKING:
    from ._store import Store

log = logging.getLogger("pgdurable.worker")

# A silent path is probed after KEEPALIVE_IDLE s and given up after COUNT
# unanswered probes INTERVAL s apart (19 s); data unacknowledged for
# USER_TIMEOUT_MS is given up too. Probes and acknowledgements come from the
# peer's kernel, not from Postgres, so a busy server or a long step never
# trips them: only a dead path does.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 3
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 10_000


def own_conninfo(conninfo: str, connect_timeout: float) -> str:
    """`conninfo` with the client side of these settings, and a connect
    timeout, wherever it does not choose its own."""
    given = conninfo_to_dict(conninfo)
    ours: dict[str, Any] = {
        "keepalives": 1, "keepalives_idle": KEEPALIVE_IDLE,
        "keepalives_interval": KEEPALIVE_INTERVAL, "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": USER_TIMEOUT_MS, "application_name": "pgdurable",
        "connect_timeout": max(2, round(connect_timeout)),  # libpq's least
    }
    return make_conninfo(conninfo, **{k: v for k, v in ours.items() if k not in given})


def connect_direct(conninfo: str, connect_timeout: float, store: Store) -> psycopg.Connection[Any]:
    """A connection of our own straight to Postgres (autocommit), with these
    settings on both ends."""
    conn = psycopg.connect(own_conninfo(conninfo, connect_timeout), autocommit=True)
    try:
        store.execute(conn, store.session_settings(bounded=False))
    except BaseException:
        conn.close()
        raise
    return conn


class Watchdog:
    """Cuts a connection whose round trip outlasts a deadline, so that the
    thread waiting on it fails at once (a broken connection) rather than
    when TCP gives up. One thread, armed around each round trip."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Condition()
        self._armed: tuple[float, psycopg.Connection[Any]] | None = None
        self._closed = False
        threading.Thread(target=self._watch, name=name, daemon=True).start()

    def arm(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        with self._lock:
            self._armed = (time.monotonic() + seconds, conn)
            self._lock.notify()

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                if self._armed is None:
                    self._lock.wait()
                    continue
                deadline, conn = self._armed
                if (left := deadline - time.monotonic()) > 0:
                    self._lock.wait(left)
                    continue
                self._armed = None
                _cut(conn)


def _cut(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket under whoever waits on it."""
    log.warning("a round trip to Postgres outlasted its deadline: dropping the connection")
    try:
        sock = socket.socket(fileno=socket.dup(conn.fileno()))
    except (OSError, psycopg.Error):
        return  # closed meanwhile
    with sock, contextlib.suppress(OSError):  # closed meanwhile
        sock.shutdown(socket.SHUT_RDWR)


class Outage:
    """Says once that Postgres cannot be reached and once that it is back,
    however many threads meet the outage meanwhile (each retrying on its
    own). It is lost when a new connection fails, or when connections go on
    breaking for GRACE seconds; one connection dropped (a terminated
    backend, a pooler's restart) and replaced at once is no outage."""

    GRACE = 1.0

    def __init__(self, who: str) -> None:
        self._who = who
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic time of the first failure in a row
        self._said = False

    def failed(self, what: str, exc: BaseException) -> None:
        """A thread could not `what`: Postgres is unreachable (`exc`)."""
        now = time.monotonic()
        with self._lock:
            self._since = self._since or now
            say = not self._said and (now - self._since >= self.GRACE or _cannot_connect(exc))
            self._said |= say
        if say:
            log.error("%s lost Postgres (cannot %s: %s); retrying until it is back",
                      self._who, what, _first_line(exc))
        else:
            log.debug("%s cannot %s: %s; retrying", self._who, what, exc)

    def succeeded(self) -> None:
        """A thread reached Postgres: if it was lost, it is back."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, said = self._since, self._said
            self._since, self._said = None, False
        if said and since is not None:
            log.warning("%s reached Postgres again after %.1f s", self._who,
                        time.monotonic() - since)


def _cannot_connect(exc: BaseException) -> bool:
    """Whether `exc` says a new connection failed (rather than one broke)."""
    return isinstance(exc, PoolTimeout) or str(exc).startswith("connection failed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
