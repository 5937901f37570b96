"""Chaos: pgdurable's promises through crashes, Postgres restarts, killed
connections and a network partition, checked by SQL afterwards.

    python bench/chaos.py --runs 10000 --workers 6 --seed 1     # the long run
    python bench/chaos.py --runs 300 --workers 4 --faults 30    # about the test's size

It starts a private Postgres (the system's initdb/pg_ctl) and worker
processes, sends `chaos/order` events (ids `order-<n>`, each send retried
until it lands, as a caller would), and meanwhile, on a schedule drawn from
`--seed`:

- SIGKILLs a random worker every 2 s, and starts another in its place;
- restarts Postgres with `pg_ctl restart -m immediate` (a crash) twice;
- terminates 1 to 3 random pgdurable backends every second;
- cuts one worker (in a network namespace of its own) off from Postgres for
  `--cut` seconds while it holds runs, by taking its link down: its
  connections stay open and hear nothing, as on a dead network path.

Each order is a run of six journal entries: `reserve` (a side effect
outside the database), `pause` (a sleep), `book` (a transactional step
that books a row), `ask` (sends the approval event), `approval` (waits for
it), `ship` (another side effect). Once the faults stop, `check` asks the
database: every order has exactly one run and it completed, each booking
exists exactly once, each journal entry once, no step began after its entry
had committed, and the runs the cut-off worker held were taken over. Then
every worker still running must serve new runs and stop cleanly.

Needs root (for the namespace; without it, the partition is skipped) and
the system's PostgreSQL binaries.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pgdurable import Context, Durable, Event
from pgdurable.embedded import EmbeddedPostgres

SCHEMA = "chaos"
STEPS = ("reserve", "pause", "book", "ask", "approval", "ship")
HERE = Path(__file__).resolve()


# -- the workload (run by the worker processes) ------------------------------

def make_app(dsn: str, **options: Any) -> Durable:
    """The app of the workers and of the sender: short leases and backoffs,
    so that faults are recovered from within seconds."""
    app = Durable(dsn, schema=SCHEMA, lease="3s", retry_backoff=("50ms", "1s"),
                  connect_timeout=5, **options)

    def effect(run_id: str, what: str) -> str:
        started = datetime.now(UTC)  # when the step's code began (one clock: this host's)
        time.sleep(random.uniform(0, 0.02))  # work, that a kill can interrupt
        with app.connection() as conn:
            conn.execute("INSERT INTO chaos.effects (run_id, what, started_at, pid) "
                         "VALUES (%s, %s, %s, %s)", (run_id, what, started, os.getpid()))
        return what

    def book(conn: psycopg.Connection[Any], run_id: str) -> int:
        row = conn.execute("INSERT INTO chaos.bookings (run_id) VALUES (%s) RETURNING id",
                           (run_id,)).fetchone()
        assert row is not None
        return int(row[0])

    @app.function(id="order", event="chaos/order", retries=20)
    def order(ctx: Context) -> dict[str, Any]:
        n = int(ctx.event.data["n"])  # type: ignore[index]
        ctx.step.run("reserve", effect, ctx.run_id, "reserve")
        ctx.step.sleep("pause", "200ms")
        booking = ctx.step.transaction("book", book, ctx.run_id)
        ctx.step.send_event("ask", Event("chaos/approved", {"n": n}))
        approval = ctx.step.wait_for_event("approval", event="chaos/approved", match="data.n",
                                           timeout="1h")
        ctx.step.run("ship", effect, ctx.run_id, "ship")
        return {"n": n, "booking": booking, "approved": approval is not None}

    @app.function(id="ping", event="chaos/ping", retries=20)
    def ping(ctx: Context) -> int:
        return ctx.step.run("where", _pid_after, 0.05)

    return app


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def worker_main(dsn: str, threads: int) -> None:
    """One worker process: works until SIGTERM, then stops gracefully."""
    import logging
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = make_app(dsn)
    app.start(threads=threads)
    print("ready", flush=True)
    stop.wait()
    app.stop(timeout=20)
    print("stopped", flush=True)


# -- the parts of the experiment -----------------------------------------------

class Partition:
    """A network namespace joined to this host by a veth pair: a worker
    started in it reaches Postgres at `server_ip`; `cut()` takes the link
    down (packets are dropped, nothing is closed), `heal()` brings it back."""

    def __init__(self) -> None:
        tag = os.getpid() % 10_000
        self.namespace = f"pgdchaos{tag}"
        self._host_link, self._inner_link = f"pgdc{tag}h", f"pgdc{tag}n"
        subnet = f"10.{200 + tag % 50}.{tag % 250}"
        self.server_ip, self._inner_ip = f"{subnet}.1", f"{subnet}.2"
        self.cut_at: float | None = None  # monotonic time of the cut, while cut

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and shutil.which("ip") is not None

    def __enter__(self) -> Partition:
        ns = ["ip", "netns", "exec", self.namespace]
        for command in (
            ["ip", "netns", "add", self.namespace],
            ["ip", "link", "add", self._host_link, "type", "veth", "peer", "name", self._inner_link],
            ["ip", "link", "set", self._inner_link, "netns", self.namespace],
            ["ip", "addr", "add", f"{self.server_ip}/24", "dev", self._host_link],
            ["ip", "link", "set", self._host_link, "up"],
            [*ns, "ip", "addr", "add", f"{self._inner_ip}/24", "dev", self._inner_link],
            [*ns, "ip", "link", "set", self._inner_link, "up"],
            [*ns, "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self._host_link], capture_output=True)

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self._host_link, "down"], check=True)
        self.cut_at = time.monotonic()

    def heal(self) -> float:
        """Bring the link back; how long it was down."""
        subprocess.run(["ip", "link", "set", self._host_link, "up"], check=True)
        assert self.cut_at is not None
        seconds, self.cut_at = time.monotonic() - self.cut_at, None
        return seconds


@dataclass
class Worker:
    process: subprocess.Popen[str]
    log: Path
    cut_off: bool = False  # the one in the network namespace


class Workers:
    """Worker processes, each logging to a file of its own."""

    def __init__(self, folder: Path, dsn: str, threads: int) -> None:
        self._folder, self._dsn, self._threads = folder, dsn, threads
        self.running: list[Worker] = []
        self.killed: list[Worker] = []

    def start(self, partition: Partition | None = None, dsn: str | None = None) -> Worker:
        log = self._folder / f"worker-{len(self.running) + len(self.killed)}.log"
        argv = [sys.executable, str(HERE), "worker", "--dsn", dsn or self._dsn,
                "--threads", str(self._threads)]
        with open(log, "w") as err:
            process = subprocess.Popen(partition.command(argv) if partition else argv,
                                       stdout=subprocess.PIPE, stderr=err, text=True,
                                       cwd=HERE.parent.parent)
        worker = Worker(process, log, cut_off=partition is not None)
        self.running.append(worker)
        return worker

    def kill_one(self, rng: random.Random) -> None:
        candidates = [w for w in self.running if not w.cut_off]
        if candidates:
            victim = rng.choice(candidates)
            victim.process.kill()
            victim.process.wait()
            self.running.remove(victim)
            self.killed.append(victim)

    def kill_all(self) -> None:
        for w in self.running:
            w.process.kill()

    def stop_all(self, timeout: float = 40) -> dict[int, int | None]:
        """SIGTERM every worker still running; their exit codes by pid (None: hung)."""
        for w in self.running:
            w.process.terminate()
        codes: dict[int, int | None] = {}
        deadline = time.monotonic() + timeout
        for w in self.running:
            try:
                codes[w.process.pid] = w.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.process.kill()
                codes[w.process.pid] = None
        return codes


class Database:
    """The harness's own statements, each on a fresh connection, retried
    while Postgres is away (it is restarted under us)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def query(self, statement: str, params: Any = None, *, patience: float = 60) -> list[Any]:
        deadline = time.monotonic() + patience
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=3, autocommit=True,
                                     application_name="chaos-harness") as conn:
                    cursor = conn.execute(statement, params)
                    return cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


# -- the experiment ----------------------------------------------------------------

@dataclass
class Config:
    runs: int = 300
    workers: int = 4  # including the cut-off one, when there is a partition
    threads: int = 4
    faults: float = 30.0  # seconds of faults
    cut: float = 10.0  # seconds the cut-off worker stays cut off
    seed: int = 1
    settle_bound: float = 60.0  # seconds after the faults by which every run must be done


@dataclass
class Report:
    runs: int = 0
    sent: int = 0
    completed: int = 0
    lost: list[str] = field(default_factory=list)  # order events without a completed run
    doubled: int = 0  # events with more than one run
    bookings_missing: int = 0
    bookings_doubled: int = 0
    journal_incomplete: int = 0  # completed runs without exactly their six entries
    # step executions begun after their entry had committed
    began_after_commit: list[str] = field(default_factory=list)
    reexecuted_before_commit: int = 0  # executions of steps cut short before their entry (allowed)
    not_approved: int = 0
    kills: int = 0
    restarts: int = 0
    terminated: int = 0
    cut_seconds: float = 0.0
    held_when_cut: list[str] = field(default_factory=list)  # the runs it held then
    taken_over: int = 0  # of those, completed by another worker
    settle_seconds: float | None = None
    elapsed: float = 0.0
    idle_workers: list[int] = field(default_factory=list)  # survivors that served no new run
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    thread_deaths: int = 0
    outage_lines: tuple[int, int] = (0, 0)  # "lost Postgres" lines, "reached Postgres again" lines

    def problems(self, config: Config) -> list[str]:
        found = [f"{name}: {value}" for name, value in (
            ("orders lost", self.lost[:10]), ("orders with two runs", self.doubled),
            ("bookings missing", self.bookings_missing),
            ("bookings doubled", self.bookings_doubled),
            ("runs with a wrong journal", self.journal_incomplete),
            ("steps begun after their entry committed", self.began_after_commit),
            ("runs not approved", self.not_approved),
            ("surviving workers that served nothing", self.idle_workers),
            ("threads that died", self.thread_deaths)) if value]
        if self.settle_seconds is None or self.settle_seconds > config.settle_bound:
            found.append(f"runs not done within {config.settle_bound} s of the faults' end")
        if any(code != 0 for code in self.exit_codes.values()):
            found.append(f"workers that did not stop cleanly: {self.exit_codes}")
        if self.taken_over < len(self.held_when_cut):
            found.append(f"of the {len(self.held_when_cut)} runs the cut-off worker held, "
                         f"only {self.taken_over} were taken over")
        return found

    def summary(self) -> str:
        return "\n".join(f"{name}: {value}" for name, value in (
            ("runs", f"{self.completed}/{self.runs} completed, {len(self.lost)} lost, "
                     f"{self.doubled} doubled"),
            ("bookings", f"{self.bookings_missing} missing, {self.bookings_doubled} doubled"),
            ("journal", f"{self.journal_incomplete} runs with a wrong journal; "
                        f"{len(self.began_after_commit)} steps begun after their entry committed; "
                        f"{self.reexecuted_before_commit} re-executed before it (at least once)"),
            ("faults", f"{self.kills} workers SIGKILLed, {self.restarts} Postgres crashes, "
                       f"{self.terminated} backends terminated, a worker cut off for "
                       f"{self.cut_seconds:.0f} s holding {len(self.held_when_cut)} runs "
                       f"({self.taken_over} taken over)"),
            ("settled", f"{self.settle_seconds:.1f} s after the faults stopped"
                        if self.settle_seconds is not None else "never"),
            ("elapsed", f"{self.elapsed:.0f} s"),
            ("workers", f"exit codes {sorted(self.exit_codes.values(), key=str)}, "
                        f"{len(self.idle_workers)} idle, {self.thread_deaths} dead threads, "
                        f"log lines lost/back {self.outage_lines}"),
        ))


def run_chaos(config: Config, folder: Path) -> Report:
    """The whole experiment in `folder` (the server's data, the workers' logs)."""
    started = time.monotonic()
    report = Report(runs=config.runs)
    rng = random.Random(config.seed)
    with ExitStack() as stack:
        partition = stack.enter_context(Partition()) if Partition.available() else None
        server = _server(folder, partition)
        dsn = stack.enter_context(server)
        db = Database(dsn)
        _prepare(dsn)
        workers = Workers(folder, dsn, config.threads)
        stack.callback(workers.kill_all)
        cut_worker = None
        if partition is not None:
            cut_worker = workers.start(partition, dsn.replace("127.0.0.1", partition.server_ip))
        while len(workers.running) < config.workers:
            workers.start()
        sender = make_app(dsn)
        stack.callback(sender.stop)
        sending = threading.Thread(target=_send_orders, args=(sender, config, report), daemon=True)
        sending.start()
        faults_end = _inject(config, rng, server, db, workers, partition, cut_worker, report)
        sending.join()
        report.settle_seconds = _settle(db, config, faults_end)
        _check(db, report, cut_worker)
        report.idle_workers = _idle_survivors(sender, db, workers)
        report.exit_codes = workers.stop_all()
        _read_logs(workers, report)
    report.elapsed = time.monotonic() - started
    return report


def _server(folder: Path, partition: Partition | None) -> EmbeddedPostgres:
    """A private server, reachable from the partition's namespace too."""
    hba = folder / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n"
                   + (f"host all all {partition.server_ip}/24 trust\n" if partition else ""))
    listen = "127.0.0.1" + (f",{partition.server_ip}" if partition else "")
    server = EmbeddedPostgres(folder / "pg", settings={
        "listen_addresses": f"'{listen}'", "hba_file": str(hba), "max_connections": "300"})
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(hba, "postgres")
    return server


def _prepare(dsn: str) -> None:
    app = make_app(dsn)
    app.migrate()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE chaos.effects (run_id uuid, what text, started_at timestamptz,"
                     " pid int)")
        conn.execute("CREATE TABLE chaos.bookings (id bigserial PRIMARY KEY, run_id uuid)")
    app.stop()


def _send_orders(app: Durable, config: Config, report: Report) -> None:
    """Send the orders over 90% of the faults, 20 at a time; a batch that
    fails (Postgres away) is sent again with the same ids, as a caller would."""
    batches = [list(range(i, min(i + 20, config.runs))) for i in range(0, config.runs, 20)]
    pause = config.faults * 0.9 / max(1, len(batches))
    for batch in batches:
        events = [Event("chaos/order", {"n": n}, id=f"order-{n}") for n in batch]
        while True:
            try:
                app.send(events)
                break
            except Exception as exc:  # UnavailableError, mostly: the caller retries
                print(f"send retried: {type(exc).__name__}: {exc}", file=sys.stderr)
                time.sleep(0.2)
        report.sent += len(batch)
        time.sleep(pause)


def _inject(
    config: Config, rng: random.Random, server: EmbeddedPostgres, db: Database,
    workers: Workers, partition: Partition | None, cut_worker: Worker | None, report: Report,
) -> float:
    """The faults, on their schedule, until `config.faults` seconds have
    passed and the cut is healed; returns the monotonic time they ended."""
    begin = time.monotonic()
    restarts = sorted(rng.uniform(0.2, 0.8) * config.faults for _ in range(2))
    cut_at = rng.uniform(0.05, 0.3) * config.faults
    cut = _Cut(db, partition, cut_worker, report) if partition and cut_worker else None
    next_kill, next_terminate = 2.0, 1.0
    while (now := time.monotonic() - begin) < config.faults or (partition and partition.cut_at):
        if restarts and now >= restarts[0]:
            restarts.pop(0)
            server.restart(mode="immediate")
            report.restarts += 1
        if cut and now >= cut_at:
            cut.step()
        if cut and cut.settled and partition and partition.cut_at \
                and time.monotonic() - partition.cut_at >= config.cut:
            report.cut_seconds = partition.heal()
        if next_kill <= now < config.faults:
            workers.kill_one(rng)
            workers.start()
            report.kills += 1
            next_kill += 2.0
        if next_terminate <= now < config.faults:
            report.terminated += _terminate_some(db, rng)
            next_terminate += 1.0
        time.sleep(0.05)
    return time.monotonic()


class _Cut:
    """The cut of one worker, stepped by the fault loop without holding it up
    (kills and terminations go on meanwhile): once the worker holds runs,
    cut it off; half a second later, once a commit it had sent has landed,
    record the runs it still holds. If it holds none (its last commits
    finished them all: a loaded machine sees runs late), heal and cut again
    when it next holds some, up to 5 times."""

    def __init__(self, db: Database, partition: Partition, worker: Worker, report: Report) -> None:
        self._db, self._partition, self._worker, self._report = db, partition, worker, report
        self._tries = 0
        self._check_at: float | None = None  # when to look at what the cut worker holds
        self.settled = False  # the cut that stays, until the fault loop heals it

    def step(self) -> None:
        if self.settled:
            return
        if self._check_at is None:
            if _held_by(self._db, self._worker):
                self._partition.cut()
                self._tries += 1
                self._check_at = time.monotonic() + 0.5
            return
        if time.monotonic() < self._check_at:
            return
        self._check_at = None
        self._report.held_when_cut = _held_by(self._db, self._worker)
        if self._report.held_when_cut or self._tries >= 5:
            self.settled = True
        else:
            self._partition.heal()


def _held_by(db: Database, worker: Worker) -> list[str]:
    return [str(run_id) for (run_id,) in db.query(
        "SELECT run_id FROM chaos.queue WHERE status = 'running' AND worker_id LIKE %s",
        (_worker_pattern(worker),))]


def _worker_pattern(worker: Worker) -> str:
    """What the worker's id (host:pid:random) is LIKE."""
    return f"%:{worker.process.pid}:%"


def _terminate_some(db: Database, rng: random.Random) -> int:
    rows = db.query("SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity "
                    "WHERE application_name = 'pgdurable' ORDER BY random() LIMIT %s) AS a",
                    (rng.randint(1, 3),))
    return sum(1 for (done,) in rows if done)


def _settle(db: Database, config: Config, faults_end: float) -> float | None:
    """Seconds from the faults' end until every order's run is done, or None."""
    while time.monotonic() - faults_end < config.settle_bound * 2:
        (done,), = db.query("SELECT count(*) FROM chaos.run_state WHERE function_id = 'order' "
                            "AND status IN ('completed', 'failed', 'cancelled')")
        if done >= config.runs:
            return time.monotonic() - faults_end
        time.sleep(0.2)
    return None


def _check(db: Database, report: Report, cut_worker: Worker | None) -> None:
    """The promises, by SQL."""
    runs = db.query("SELECT e.id, count(r.id), count(r.id) FILTER (WHERE s.status = 'completed') "
                    "FROM chaos.events e LEFT JOIN chaos.run_state r ON r.event_ids[1] = e.id "
                    "AND r.function_id = 'order' LEFT JOIN chaos.run_state s ON s.id = r.id "
                    "WHERE e.name = 'chaos/order' GROUP BY e.id")
    report.completed = sum(1 for _, _, done in runs if done == 1)
    report.lost = sorted(e for e, _, done in runs if done == 0)
    report.lost += [f"order-{n}" for n in range(report.runs)
                    if f"order-{n}" not in {e for e, _, _ in runs}]
    report.doubled = sum(1 for _, n, _ in runs if n > 1)
    (report.bookings_missing, report.bookings_doubled), = db.query(
        "SELECT count(*) FILTER (WHERE n = 0), count(*) FILTER (WHERE n > 1) FROM ("
        " SELECT (SELECT count(*) FROM chaos.bookings b WHERE b.run_id = r.id) AS n"
        " FROM chaos.runs r WHERE r.function_id = 'order') AS x")
    (report.journal_incomplete,), = db.query(
        "SELECT count(*) FROM chaos.run_state r WHERE r.function_id = 'order' "
        "AND r.status = 'completed' AND (SELECT array_agg(step_key ORDER BY step_key) "
        "FROM chaos.steps s WHERE s.run_id = r.id AND s.status = 'completed') "
        "IS DISTINCT FROM %s", (sorted(STEPS),))
    report.began_after_commit = [" ".join(map(str, row)) for row in db.query(
        "SELECT e.run_id, e.what, e.pid, e.started_at - s.finished_at FROM chaos.effects e"
        " JOIN chaos.steps s ON s.run_id = e.run_id AND s.step_key = e.what"
        " WHERE e.started_at > s.finished_at")]
    (report.reexecuted_before_commit,), = db.query(
        "SELECT count(*) - count(DISTINCT (e.run_id, e.what)) FROM chaos.effects e"
        " JOIN chaos.steps s ON s.run_id = e.run_id AND s.step_key = e.what")
    (report.not_approved,), = db.query(
        "SELECT count(*) FROM chaos.run_state WHERE function_id = 'order' AND status = 'completed'"
        " AND (output ->> 'approved')::boolean IS NOT TRUE")
    if cut_worker is not None and report.held_when_cut:
        (report.taken_over,), = db.query(
            "SELECT count(*) FROM chaos.run_state WHERE id = ANY(%s::uuid[])"
            " AND status = 'completed' AND worker_id NOT LIKE %s",
            (report.held_when_cut, _worker_pattern(cut_worker)))


def _idle_survivors(app: Durable, db: Database, workers: Workers, pings: int = 400) -> list[int]:
    """Send runs that take a while each; every worker still running must serve some."""
    app.send([Event("chaos/ping", {"i": i}, id=f"ping-{i}") for i in range(pings)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        (done,), = db.query("SELECT count(*) FROM chaos.run_state WHERE function_id = 'ping'"
                            " AND status = 'completed'")
        if done >= pings:
            break
        time.sleep(0.2)
    served = {int(pid) for (pid,) in db.query(
        "SELECT DISTINCT (output)::int FROM chaos.run_state WHERE function_id = 'ping'"
        " AND status = 'completed'")}
    return [w.process.pid for w in workers.running if w.process.pid not in served]


def _read_logs(workers: Workers, report: Report) -> None:
    lost = back = deaths = 0
    for w in workers.running + workers.killed:
        text = w.log.read_text(errors="replace")
        lost += text.count("lost Postgres")
        back += text.count("reached Postgres again")
        deaths += text.count("Exception in thread")
    report.outage_lines = (lost, back)
    report.thread_deaths = deaths


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("role")
        parser.add_argument("--dsn", required=True)
        parser.add_argument("--threads", type=int, default=4)
        args = parser.parse_args()
        worker_main(args.dsn, args.threads)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--faults", type=float, default=None,
                        help="seconds of faults (default: as long as sending takes, at least 60)")
    parser.add_argument("--cut", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    faults = args.faults if args.faults is not None else max(60.0, args.runs / 50)
    config = Config(runs=args.runs, workers=args.workers, threads=args.threads, faults=faults,
                    cut=args.cut, seed=args.seed, settle_bound=120.0)
    with tempfile.TemporaryDirectory(prefix="pgdurable-chaos-") as folder:
        report = run_chaos(config, Path(folder))
    print(report.summary())
    problems = report.problems(config)
    print("problems: " + ("; ".join(problems) if problems else "none"))
    print(json.dumps({"config": config.__dict__, "report": report.__dict__}, default=str))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
