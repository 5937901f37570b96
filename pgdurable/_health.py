"""`app.health()`: what liveness and readiness probes ask."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Health:
    """How this process's pgdurable stands.

    `live`: no worker thread has died (restart the process if not).
    `ready`: live, the database answers, and the worker (if one runs here)
    recorded its heartbeat within its lease. `problems` says what is wrong.
    """

    live: bool
    ready: bool
    database: bool  # answered within connect_timeout (or was not asked)
    worker: bool  # a worker runs in this process
    heartbeat_age: float | None  # seconds since the worker's last recorded heartbeat
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(database_error: str | None, worker: WorkerFacts | None, lease: float) -> Health:
    """The verdict from what was found."""
    problems = [] if database_error is None else [f"the database does not answer: {database_error}"]
    live, age = True, None
    if worker is not None:
        age = worker.heartbeat_age
        if worker.dead_threads:
            live = False
            problems.append(f"worker threads died: {', '.join(worker.dead_threads)}")
        if age is None or age > lease:
            problems.append("the worker has not recorded a heartbeat within its lease "
                            f"({'never' if age is None else f'{age:.0f} s ago'})")
    return Health(live=live, ready=not problems, database=database_error is None,
                  worker=worker is not None, heartbeat_age=age, problems=problems)


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """What a worker knows of itself (Worker.facts)."""

    dead_threads: list[str]
    heartbeat_age: float | None
