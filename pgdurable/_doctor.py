"""`app.doctor()`: the settings and states that hurt in production, each
with what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import psycopg

from ._format import format_duration
from ._store import Store, behind_pooler
from .errors import NewerSchemaError

Verdict = Literal["ok", "warning", "problem"]

OLD_READY = timedelta(minutes=5)  # a ready run waiting longer: workers are missing or saturated
PRUNE_LATE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, how it stands, and what to do."""

    name: str
    verdict: Verdict
    found: str
    advice: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "found": self.found,
                "advice": self.advice}


def diagnose(
    store: Store, conn: psycopg.Connection[Any], functions: Sequence[str] = ()
) -> list[Check]:
    """Every check; only the schema's when it is not as this library needs
    it. `functions`: those the app registers, if known."""
    schema = _schema(store, conn)
    if schema.verdict != "ok":
        return [schema]
    facts = store.doctor_facts(conn)
    return [schema, _synchronous_commit(facts), _pooler(facts, conn.info.port),
            _autovacuum(facts), _oldest_ready(facts), _unserved(facts), _pruning(facts),
            _sql_sends(facts, functions)]


def _schema(store: Store, conn: psycopg.Connection[Any]) -> Check:
    try:
        migrated = store.is_migrated(conn)
    except NewerSchemaError as exc:
        return Check("schema", "problem", str(exc), "upgrade pgdurable in this app to the "
                     "version that migrated the schema")
    if not migrated:
        return Check("schema", "problem", f"schema {store.schema!r} is missing or older than "
                     "this library", "run `pgdurable migrate` (workers refuse to start until then)")
    return Check("schema", "ok", f"schema {store.schema!r} is up to date")


def _synchronous_commit(facts: Any) -> Check:
    if facts.synchronous_commit in ("on", "remote_apply", "remote_write", "local"):
        return Check("synchronous_commit", "ok", f"synchronous_commit is {facts.synchronous_commit}")
    return Check("synchronous_commit", "warning",
                 f"synchronous_commit is {facts.synchronous_commit}: a crash of Postgres can lose "
                 "events that send() returned, and journal entries of steps that ran",
                 "set synchronous_commit = on for the role or database pgdurable uses "
                 "(pgdurable already commits its claims asynchronously where that is safe)")


def _pooler(facts: Any, client_port: int) -> Check:
    if not behind_pooler(facts.server_port, client_port):
        return Check("pooler", "ok", "connected straight to Postgres")
    return Check("pooler", "warning",
                 f"connected on port {client_port} to a server that listens on "
                 f"{facts.server_port}: likely through a pooler (PgBouncer)",
                 "fine in transaction mode, but LISTEN and pruning need a session: give "
                 "Durable(listen_dsn=...) a direct DSN, or workers poll and do not prune")


def _autovacuum(facts: Any) -> Check:
    if facts.autovacuum and not facts.autovacuum_off_tables:
        return Check("autovacuum", "ok", "autovacuum is on for the queue")
    where = ("the server" if not facts.autovacuum
             else "tables " + ", ".join(facts.autovacuum_off_tables))
    return Check("autovacuum", "warning", f"autovacuum is off for {where}",
                 "turn it on: workers VACUUM queue and waits themselves when they own them, but "
                 "history and events need autovacuum to reuse their space")


def _oldest_ready(facts: Any) -> Check:
    age = facts.oldest_ready_age
    if age is None or age < OLD_READY:
        return Check("backlog", "ok", "no ready run has waited more than "
                     f"{int(OLD_READY.total_seconds() // 60)} minutes")
    waited = format_duration(age.total_seconds())
    return Check("backlog", "warning", f"the oldest ready run has waited {waited}",
                 "workers are missing, stopped claiming (see `pgdurable workers` and their logs), "
                 "or are too few for the load: add threads or processes")


def _unserved(facts: Any) -> Check:
    if not facts.unserved:
        return Check("unserved functions", "ok", "every function with unfinished runs has a live worker")
    listed = ", ".join(f"{f} ({n} runs)" for f, n in sorted(facts.unserved.items()))
    return Check("unserved functions", "problem",
                 f"unfinished runs of functions no live worker serves: {listed}",
                 "start workers that register these functions, or cancel the runs "
                 "(`pgdurable runs cancel --function F`)")


def _pruning(facts: Any) -> Check:
    if not facts.retention_recorded:
        return Check("retention", "ok", "no retention recorded yet: nothing is pruned")
    late = facts.prune_overdue
    if late is None or late < PRUNE_LATE:
        return Check("retention", "ok", "pruning is on schedule")
    return Check("retention", "warning", f"the next prune is {format_duration(late.total_seconds())} overdue",
                 "workers prune by themselves (prune_interval); if none may, run `pgdurable prune` "
                 "from cron")


def _sql_sends(facts: Any, functions: Sequence[str]) -> Check:
    """Sends from SQL and event triggers start runs of the functions workers
    have recorded, and only of those."""
    unknown = sorted(set(functions) - set(facts.recorded))
    found = [f"no worker has recorded {', '.join(unknown)}" if unknown else "",
             f"event triggers send {', '.join(facts.unhandled_triggers)}, which no recorded "
             "function handles" if facts.unhandled_triggers else "",
             f"{', '.join(facts.recorded_without_spec)} were recorded by older workers"
             if facts.recorded_without_spec else ""]
    if not any(found):
        return Check("sends from SQL", "ok", "every function is recorded for sends from SQL")
    return Check("sends from SQL", "warning", "; ".join(f for f in found if f),
                 "sends from SQL and event triggers start runs only of the functions that a "
                 "worker of this version has recorded (at its start): start one that serves them; "
                 "events sent before start no run of a function recorded later")
