"""Row-level security contexts (ctx.as_user, ctx.rls_bypass), their audit
trail, and the least-privilege roles.

A superuser ignores RLS, so these tests connect as ordinary login roles:
`pgdurable_test_jobs` (member of the worker role and of a BYPASSRLS role)
and `pgdurable_test_web` (member of the sender role). Roles are cluster-wide
and kept between runs; each test's schema grants them what it needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest import wait_until
from psycopg.conninfo import make_conninfo

import pgdurable
from pgdurable import (
    ConfigurationError,
    Context,
    Durable,
    Retention,
    RlsContextError,
)
from pgdurable.cli import main
from pgdurable.testing import internals

PASSWORD = "pgdurable-test"
LOGINS = {"pgdurable_test_jobs": "pgdurable_test_worker", "pgdurable_test_web": "pgdurable_test_sender"}
BYPASS_ROLE = "pgdurable_test_bypass"


def _ensure_role(db: psycopg.Connection[Any], name: str, options: str) -> None:
    if db.execute("SELECT FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
        db.execute(f"CREATE ROLE {name} {options}")


@pytest.fixture
def roles(app: Durable, db: psycopg.Connection[Any]) -> Durable:
    """The schema's least-privilege roles, their login roles, and a table
    of the app's own under RLS: alice's rows a1, a2 and bob's b1."""
    if db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() != (True,):
        pytest.skip("creating login and BYPASSRLS roles needs a superuser test DSN")
    app.create_roles(sender="pgdurable_test_sender", worker="pgdurable_test_worker")
    _ensure_role(db, BYPASS_ROLE, "NOLOGIN BYPASSRLS")
    for login, group in LOGINS.items():
        _ensure_role(db, login, f"LOGIN PASSWORD '{PASSWORD}'")
        db.execute(f"GRANT {group} TO {login}")
    db.execute(f"GRANT {BYPASS_ROLE} TO pgdurable_test_jobs")
    table = f"{app.schema}.messages"
    db.execute(f"CREATE TABLE {table} (owner text NOT NULL, body text NOT NULL)")
    db.execute(f"INSERT INTO {table} VALUES ('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1')")
    db.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    db.execute(f"""CREATE POLICY by_owner ON {table}
                   USING (owner = current_setting('app.user_id', true)
                          OR current_setting('app.rls_bypass', true) = 'on')""")
    db.execute(f"GRANT SELECT, INSERT ON {table} TO pgdurable_test_worker")
    db.execute(f"GRANT USAGE ON SCHEMA {app.schema} TO {BYPASS_ROLE}")  # what its work needs
    db.execute(f"GRANT SELECT ON {table} TO {BYPASS_ROLE}")
    return app


@pytest.fixture
def as_login(dsn: str, make_app: Callable[..., Durable], roles: Durable) -> Callable[..., Durable]:
    """An app on the test's schema that connects as one of the login roles."""

    def make(login: str, **options: Any) -> Durable:
        return make_app(dsn=make_conninfo(dsn, user=login, password=PASSWORD), **options)

    return make


def bodies(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    return sorted(r[0] for r in conn.execute(f"SELECT body FROM {schema}.messages"))


def audit(db: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    return db.execute(f"SELECT kind, tag, user_id, run_id::text, function_id, step_key, db_role "
                      f"FROM {schema}.rls_audit ORDER BY at").fetchall()


# -- what a job sees ---------------------------------------------------------


def test_a_job_sees_nothing_then_its_user_s_rows_then_all_with_a_bypass(
    as_login: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    jobs = as_login("pgdurable_test_jobs")
    schema = jobs.schema

    @jobs.function(id="read-messages", event="messages/read")
    def read_messages(ctx: Context) -> list[list[str]]:
        def plain() -> list[str]:
            with jobs.connection() as conn:
                return bodies(conn, schema)

        def as_alice() -> list[str]:
            with ctx.as_user("alice") as conn:
                return bodies(conn, schema)

        def bypassing() -> list[str]:
            with ctx.rls_bypass("jobs:read-all") as conn:
                return bodies(conn, schema)

        seen = [ctx.step.run("plain", plain), ctx.step.run("as-alice", as_alice)]
        ctx.step.sleep("nap", timedelta(milliseconds=10))  # the worker role parks runs too
        return [*seen, ctx.step.run("bypass", bypassing)]

    [event_id] = jobs.send("messages/read", {})
    [run] = jobs.runs_for_event(event_id)
    jobs.start(threads=2)
    done = jobs.wait_for_run(run.id, 30)
    assert (done.status, done.output) == ("completed", [[], ["a1", "a2"], ["a1", "a2", "b1"]])
    assert audit(db, schema) == [
        ("as_user", None, "alice", run.id, "read-messages", "as-alice", "pgdurable_test_jobs"),
        ("bypass", "jobs:read-all", None, run.id, "read-messages", "bypass", "pgdurable_test_jobs"),
    ]


def test_a_bypass_role_is_switched_to_and_named_in_the_audit(
    as_login: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    jobs = as_login("pgdurable_test_jobs", bypass_role=BYPASS_ROLE)

    @jobs.function(id="export", event="export")
    def export(ctx: Context) -> list[Any]:
        def everything() -> list[Any]:
            with ctx.rls_bypass("jobs:export") as conn:
                row = conn.execute("SELECT current_user, current_setting('app.rls_bypass', true)"
                                   ).fetchone()
                return [*(row or ()), bodies(conn, jobs.schema)]

        return list(ctx.step.run("everything", everything))

    [event_id] = jobs.send("export", {})
    [run] = jobs.runs_for_event(event_id)
    jobs.start(threads=1)
    done = jobs.wait_for_run(run.id, 30)
    assert done.output == [BYPASS_ROLE, None, ["a1", "a2", "b1"]]  # by the role, not the setting
    assert [row[6] for row in audit(db, jobs.schema)] == [BYPASS_ROLE]


def test_as_user_inside_a_transactional_step_commits_with_it(
    as_login: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    jobs = as_login("pgdurable_test_jobs")

    @jobs.function(id="post", event="post")
    def post(ctx: Context) -> list[str]:
        def write(conn: psycopg.Connection[Any]) -> list[str]:
            pgdurable.as_user(conn, "bob", tag="jobs:post")
            conn.execute(f"INSERT INTO {jobs.schema}.messages VALUES ('bob', 'b2')")
            return bodies(conn, jobs.schema)

        return list(ctx.step.transaction("write", write))

    [event_id] = jobs.send("post", {})
    [run] = jobs.runs_for_event(event_id)
    jobs.start(threads=1)
    assert jobs.wait_for_run(run.id, 30).output == ["b1", "b2"]
    assert audit(db, jobs.schema) == [
        ("as_user", "jobs:post", "bob", run.id, "post", "write", "pgdurable_test_jobs")]


def test_a_bypass_role_inside_a_transactional_step_commits_with_it(
    as_login: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    """Issue 22, s14: the journal entry is written as the worker's own role,
    not as the bypass role, which has only the app's table grants."""
    jobs = as_login("pgdurable_test_jobs", bypass_role=BYPASS_ROLE)

    @jobs.function(id="count-all", event="count-all")
    def count_all(ctx: Context) -> list[Any]:
        def read(conn: psycopg.Connection[Any]) -> list[Any]:
            pgdurable.rls_bypass(conn, "jobs:count-all")
            row = conn.execute("SELECT current_user").fetchone()
            return [row[0] if row else None, bodies(conn, jobs.schema)]

        return list(ctx.step.transaction("read", read))

    [event_id] = jobs.send("count-all", {})
    [run] = jobs.runs_for_event(event_id)
    jobs.start(threads=1)
    done = jobs.wait_for_run(run.id, 30)
    assert (done.status, done.output) == ("completed", [BYPASS_ROLE, ["a1", "a2", "b1"]])
    assert [row[6] for row in audit(db, jobs.schema)] == [BYPASS_ROLE]


# -- the audit row goes with its work; nothing leaks ----------------------------------


def test_the_audit_row_rolls_back_with_the_work_it_covers(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    db.execute(f"CREATE TABLE {app.schema}.notes (body text)")
    with pytest.raises(RuntimeError), app.connection() as conn:
        pgdurable.rls_bypass(conn, "ops:backfill", app=app)
        conn.execute(f"INSERT INTO {app.schema}.notes VALUES ('lost')")
        raise RuntimeError("the work failed")
    assert audit(db, app.schema) == []
    assert db.execute(f"SELECT count(*) FROM {app.schema}.notes").fetchone() == (0,)
    with app.connection() as conn:
        pgdurable.rls_bypass(conn, "ops:backfill", app=app)
    [(kind, tag, user, run_id, function_id, step, role)] = audit(db, app.schema)
    assert (kind, tag, user, run_id, function_id, step) == ("bypass", "ops:backfill", None, None,
                                                           None, None)
    assert role == db.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]


SETTINGS = ("SELECT pg_backend_pid(), current_user, current_setting('app.user_id', true), "
            "current_setting('app.rls_bypass', true)")


def test_neither_setting_leaks_to_the_next_transaction_or_borrower(
    make_app: Callable[..., Durable], roles: Durable
) -> None:
    for options in ({}, {"bypass_role": BYPASS_ROLE}):
        app = make_app(pool_size=1, **options)
        with app.connection() as conn:
            pgdurable.as_user(conn, "alice", app=app)
            pgdurable.rls_bypass(conn, "ops:leak-check", app=app)
            inside = conn.execute(SETTINGS).fetchone()
        with app.connection() as conn:  # the next borrower of the one pooled connection
            after = conn.execute(SETTINGS).fetchone()
        assert inside is not None and after is not None
        assert after[0] == inside[0]  # the same connection...
        assert inside[2] == "alice" and (inside[1] == BYPASS_ROLE or inside[3] == "on")
        assert after[2] in (None, "") and after[3] in (None, "")  # ...with nothing left over
        assert after[1] != BYPASS_ROLE


def test_neither_setting_is_seen_by_another_thread(app: Durable) -> None:
    inside, seen, done = threading.Event(), [], threading.Event()

    def holder() -> None:
        with app.connection() as conn:
            pgdurable.as_user(conn, "alice", app=app)
            pgdurable.rls_bypass(conn, "ops:thread-check", app=app)
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(10)
    with app.connection() as conn:
        seen.append(conn.execute(SETTINGS).fetchone())
    done.set()
    thread.join(10)
    assert seen[0] is not None and seen[0][2] in (None, "") and seen[0][3] in (None, "")


# -- bad input ------------------------------------------------------------


@pytest.mark.parametrize("tag", ["", "has space", "x" * 129, None, "-starts-with-dash"])
def test_a_bypass_needs_a_valid_tag(app: Durable, db: psycopg.Connection[Any], tag: Any) -> None:
    with pytest.raises(RlsContextError, match="RLS tag"), app.connection() as conn:
        pgdurable.rls_bypass(conn, tag, app=app)
    assert audit(db, app.schema) == []


@pytest.mark.parametrize("user", ["", "a\x00b", True, 1.5, None])
def test_as_user_needs_a_valid_user_id(app: Durable, user: Any) -> None:
    with pytest.raises(RlsContextError, match="user id"), app.connection() as conn:
        pgdurable.as_user(conn, user, app=app)


def test_contexts_need_a_transaction_and_an_app(app: Durable) -> None:
    with internals(app).pool.connection() as conn, pytest.raises(RlsContextError, match="open transaction"):
        pgdurable.rls_bypass(conn, "ops:x", app=app)  # autocommit, no transaction open
    with pytest.raises(ConfigurationError, match="outside a run needs app="), \
            app.connection() as conn:
        pgdurable.rls_bypass(conn, "ops:x")


@pytest.mark.parametrize(("option", "value"), [
    ("user_setting", "user_id"), ("bypass_setting", "app.x; DROP TABLE t"),
    ("bypass_role", "Robert'); DROP TABLE t; --"),
])
def test_bad_rls_settings_are_refused(dsn: str, option: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        Durable(dsn, **{option: value})


# -- least privilege ----------------------------------------------------------------


def test_the_sender_role_sends_and_reads_run_state_only(
    as_login: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    web = as_login("pgdurable_test_web")
    web.function(id="noop", event="noop")(lambda ctx: None)
    [event_id] = web.send("noop", {"n": 1})
    [run] = web.runs_for_event(event_id)
    assert web.get_run(run.id) is not None and run.status == "queued"
    assert [r.id for r in web.list_runs(event="noop")] == [run.id]  # by name, from run_state
    for statement in (f"SELECT * FROM {web.schema}.events", f"DELETE FROM {web.schema}.queue",
                      f"SELECT * FROM {web.schema}.steps"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), web.connection() as conn:
            conn.execute(statement)
    # An upgrade recreates the functions and views: the grants come back with them.
    db.execute(f"UPDATE {web.schema}.schema_functions SET checksum = 'changed'")
    Durable(db.info.dsn, schema=web.schema).migrate()
    assert len(web.send("noop", {"n": 2})) == 1


def test_the_sender_role_sends_from_sql_and_a_table_s_writers_need_it_for_its_trigger(
    dsn: str, roles: Durable, db: psycopg.Connection[Any]
) -> None:
    schema, table = roles.schema, f"{roles.schema}.signups"
    roles.function(id="welcome", event="signup/created")(lambda ctx: None)
    roles.start(threads=1)  # records the registry that SQL sends read
    roles.stop()
    db.execute(f"CREATE TABLE {table} (email text NOT NULL)")
    db.execute(f"GRANT INSERT ON {table} TO pgdurable_test_web, {BYPASS_ROLE}")
    roles.create_event_trigger(table, "signup/created")
    web_dsn = make_conninfo(dsn, user="pgdurable_test_web", password=PASSWORD)
    with psycopg.connect(web_dsn, autocommit=True) as web:
        [(sent,)] = web.execute(f"SELECT {schema}.send('signup/created', '{{}}')").fetchall()
        web.execute(f"INSERT INTO {table} VALUES ('a@example.com')")
        for statement in (f"SELECT * FROM {schema}.function_registry",
                          f"SELECT * FROM {schema}.events", f"SELECT {schema}.registry_specs('{{x}}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                web.execute(statement)
    db.execute(f"SET ROLE {BYPASS_ROLE}")  # may write the table, but is no sender
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="send_batch"):
            db.execute(f"INSERT INTO {table} VALUES ('b@example.com')")
    finally:
        db.execute("RESET ROLE")
    assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)  # the refused write too
    names = db.execute(f"SELECT e.name, r.function_id FROM {schema}.events e "
                       f"JOIN {schema}.runs r ON r.event_ids[1] = e.id ORDER BY e.id").fetchall()
    assert names == [("signup/created", "welcome")] * 2 and roles.get_event(sent) is not None


def test_the_worker_role_cannot_rewrite_pgdurable_s_bookkeeping(
    as_login: Callable[..., Durable]
) -> None:
    jobs = as_login("pgdurable_test_jobs")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), jobs.connection() as conn:
        conn.execute(f"DELETE FROM {jobs.schema}.schema_version")
    jobs.function(id="quick", event="quick")(lambda ctx: "ok")
    [event_id] = jobs.send("quick", {})
    jobs.start(threads=1)
    wait_until(lambda: [r.status for r in jobs.runs_for_event(event_id)] == ["completed"],
               what="the run, under the worker role")


def test_the_roles_command_grants_and_public_cannot_send(
    dsn: str, roles: Durable, db: psycopg.Connection[Any]
) -> None:
    schema = roles.schema
    db.execute(f"DELETE FROM {schema}.role_grants")
    assert main(["roles", "--dsn", dsn, "--schema", schema, "--sender", "pgdurable_test_sender",
                 "--worker", "pgdurable_test_worker"]) == 0
    assert db.execute(f"SELECT role_name, kind FROM {schema}.role_grants ORDER BY kind").fetchall() \
        == [("pgdurable_test_sender", "sender"), ("pgdurable_test_worker", "worker")]
    send = f"{schema}.send_events(jsonb, jsonb, interval)"
    can = db.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE'), "
                     "has_function_privilege(%s, %s, 'EXECUTE')",
                     ("pgdurable_test_sender", send, BYPASS_ROLE, send)).fetchone()
    assert can == (True, False)  # granted to the sender; not to PUBLIC


def test_no_function_that_runs_as_the_owner_is_open_to_the_sender_role_or_public(
    roles: Durable, db: psycopg.Connection[Any]
) -> None:
    """Functions that run with their owner's rights (SECURITY DEFINER) can
    do what the owner can: drop a partition of history, for one. Only the
    worker role may call them, and the sender role send_events, send_batch
    and list_runs (which reads what run_state, granted to it, shows) alone."""
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, has_function_privilege(%s, p.oid, 'EXECUTE'), "
        "has_function_privilege(%s, p.oid, 'EXECUTE'), has_function_privilege(%s, p.oid, 'EXECUTE') "
        "FROM pg_proc p WHERE p.pronamespace = %s::regnamespace AND p.prosecdef",
        ("pgdurable_test_sender", "pgdurable_test_worker", BYPASS_ROLE, roles.schema)).fetchall()
    assert len(rows) >= 7  # send_events, list_runs and the five of pruning
    senders = tuple(f"{roles.schema}.{name}(" for name in ("send_events", "send_batch", "list_runs"))
    for name, sender, worker, other in rows:
        assert (sender, worker, other) == (name.startswith(senders), True, False), name


def test_the_audit_names_the_step_each_context_was_opened_in(
    app: Durable, db: psycopg.Connection[Any]
) -> None:
    def bypass_in(ctx: Context, tag: str) -> str:
        with ctx.rls_bypass(tag):
            return tag

    @app.function(id="branches", event="branches")
    def branches(ctx: Context) -> None:
        with ctx.as_user("carol"):  # in the handler, outside any step
            pass
        ctx.step.parallel((lambda: ctx.step.run("left", bypass_in, ctx, "jobs:left"),
                           lambda: ctx.step.run("right", bypass_in, ctx, "jobs:right")))

    @app.function(id="async-branches", event="branches")
    async def async_branches(ctx: Context) -> None:
        async def branch(name: str) -> str:
            return str(await ctx.step.run(name, bypass_in, ctx, f"jobs:async-{name}"))

        await ctx.step.parallel((lambda: branch("up"), lambda: branch("down")))

    [event_id] = app.send("branches", {})
    app.start(threads=2)
    for run in app.runs_for_event(event_id):
        assert app.wait_for_run(run.id, 30).status == "completed"
    rows = {(tag or user, step, function) for _, tag, user, _, function, step, _
            in audit(db, app.schema)}
    assert rows == {("carol", None, "branches"), ("jobs:left", "left", "branches"),
                    ("jobs:right", "right", "branches"),
                    ("jobs:async-up", "up", "async-branches"),
                    ("jobs:async-down", "down", "async-branches")}


def test_a_worker_of_the_least_privilege_role_prunes(
    as_login: Callable[..., Durable], db: psycopg.Connection[Any]
) -> None:
    """Partitions are made and dropped by their owner's functions: the worker
    role, which owns nothing, prunes all the same."""
    jobs = as_login("pgdurable_test_jobs", retention=Retention(completed=0),
                    prune_interval=None)  # only the prune of the test
    jobs.function(id="quick", event="quick")(lambda ctx: "done")
    jobs.start(threads=1)
    [event_id] = jobs.send("quick", {})
    [run] = wait_until(lambda: jobs.runs_for_event(event_id))
    finished = jobs.wait_for_run(run.id, 20).finished_at
    assert finished is not None
    removed = jobs.prune(as_of=finished + timedelta(days=2))
    assert removed["runs"] == 1 and removed["partitions_dropped"] >= 1
    assert jobs.get_run(run.id) is None
