"""Durable work started from outside Python: an admin tool (any language)
inserts users, and a table trigger sends `user/created` for each new row in
the writer's transaction; a data script sends `user/upgraded` with plain SQL.

- `welcome` sends a welcome email once per user (`idempotency=` on the
  email, resolved in SQL as a Python send resolves it);
- `upgrade` runs for a plan change sent by `SELECT <schema>.send(...)`.

    python examples/sql_sends.py

With no PGDURABLE_DSN/DATABASE_URL set it runs on the embedded Postgres.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from pgdurable import Context, Durable
from pgdurable.embedded import dsn_or_embedded


def build(dsn: str, schema: str = "sql_sends") -> tuple[Durable, list[dict[str, Any]]]:
    """The app, and the outbox its stand-in mailer appends to."""
    app = Durable(dsn, schema=schema)
    outbox: list[dict[str, Any]] = []

    @app.function(id="welcome", event="user/created", idempotency="data.new.email")
    def welcome(ctx: Context) -> str:
        user = ctx.event.data["new"]
        ctx.step.run("mail", outbox.append, {"to": user["email"], "kind": "welcome"})
        return str(user["email"])

    @app.function(id="upgrade", event="user/upgraded")
    def upgrade(ctx: Context) -> str:
        plan = ctx.event.data["plan"]
        ctx.step.run("mail", outbox.append, {"to": ctx.event.data["email"], "kind": plan})
        return str(plan)

    return app, outbox


def install(app: Durable) -> str:
    """Migrate, make the users table, and the trigger that sends its new
    rows (in a real app, both are in the app's migrations). Returns the table."""
    app.migrate()
    table = f"{app.schema}.users"
    with app.connection() as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} "
                     "(id serial PRIMARY KEY, email text NOT NULL, password_hash text)")
    app.create_event_trigger(table, "user/created", ops=["insert"], columns=["id", "email"])
    return table


def admin_inserts(dsn: str, table: str, emails: list[str]) -> None:
    """What another service does: plain SQL, no pgdurable."""
    with psycopg.connect(dsn) as conn:
        conn.cursor().executemany(f"INSERT INTO {table} (email, password_hash) VALUES (%s, 'x')",
                                  [(e,) for e in emails])


def script_sends(dsn: str, schema: str, email: str, plan: str) -> str:
    """What a data script does: one SQL call; returns the event id."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT {schema}.send('user/upgraded', %s::jsonb)",
                           (json.dumps({"email": email, "plan": plan}),)).fetchone()
    assert row is not None
    return str(row[0])


def main() -> None:
    dsn = dsn_or_embedded()
    app, outbox = build(dsn)
    table = install(app)
    app.start(threads=2)  # a worker records the functions that SQL sends start
    try:
        admin_inserts(dsn, table, ["ada@example.com", "bob@example.com", "ada@example.com"])
        event_id = script_sends(dsn, app.schema, "bob@example.com", "pro")
        [run] = app.runs_for_event(event_id)
        app.wait_for_run(run.id, timeout=30)
        for welcome in app.list_runs(function="welcome"):
            app.wait_for_run(welcome.id, timeout=30)
        print(sorted((m["to"], m["kind"]) for m in outbox))
    finally:
        app.stop()


if __name__ == "__main__":
    main()
