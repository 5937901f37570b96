"""FastAPI, Flask and Django, through their examples; and sending events in
the app's transaction from a psycopg pool and a SQLAlchemy session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from pgdurable import Durable
from pgdurable.testing import drop_schema, new_schema_name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import django_app  # noqa: E402
import fastapi_app  # noqa: E402
import flask_app  # noqa: E402
import web_jobs  # noqa: E402


@pytest.fixture
def jobs(dsn: str, schema: str) -> Iterator[Durable]:
    durable = web_jobs.set_up(web_jobs.build(dsn, schema))
    yield durable
    durable.stop(timeout=5)


def summary_of(db: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    return db.execute(f"SELECT title, summary FROM {schema}.videos").fetchall()


def test_fastapi_lifespan_runs_workers_and_the_status_endpoint_polls(
    jobs: Durable, db: psycopg.Connection[Any]
) -> None:
    with TestClient(fastapi_app.create_api(jobs)) as client:
        accepted = client.post("/videos", json={"title": "Talk", "url": "https://v.example/1"})
        assert accepted.status_code == 202
        final = web_jobs.poll(lambda url: client.get(url).json(), accepted.json()["status_url"])
        assert final["status"] == "completed" and final["output"]["summary"].startswith("A talk")
        assert client.get("/runs/not-a-run").status_code == 404
    jobs.start(threads=1)  # would raise had the lifespan not stopped its workers
    assert summary_of(db, jobs.schema) == [("Talk", final["output"]["summary"])]


def test_flask_starts_workers_and_the_status_endpoint_polls(
    jobs: Durable, db: psycopg.Connection[Any]
) -> None:
    client = flask_app.create_app(jobs).test_client()
    accepted = client.post("/videos", json={"title": "Talk", "url": "https://v.example/2"})
    assert accepted.status_code == 202 and accepted.json is not None
    final = web_jobs.poll(lambda url: client.get(url).json or {}, accepted.json["status_url"])
    assert final["status"] == "completed"
    assert client.get("/runs/00000000-0000-7000-8000-000000000000").status_code == 404
    assert summary_of(db, jobs.schema)[0][1] == final["output"]["summary"]


# -- Django: one configuration per process, on a schema of its own ----------------


@pytest.fixture(scope="module")
def django_jobs(dsn: str) -> Iterator[Durable]:
    schema = new_schema_name()
    durable = web_jobs.set_up(django_app.configure(dsn, schema))
    yield durable
    durable.stop(timeout=5)
    from django.db import connections

    connections.close_all()
    drop_schema(dsn, schema)


def test_django_sends_in_its_own_transaction(
    django_jobs: Durable, db: psycopg.Connection[Any]
) -> None:
    from django.db import transaction

    from pgdurable.integrations.django import send

    with pytest.raises(RuntimeError), transaction.atomic():
        [lost] = send(django_jobs, "video/uploaded", {"video_id": "v0", "url": "u"})
        raise RuntimeError("the view failed after sending")
    assert django_jobs.get_event(lost) is None  # rolled back with Django's transaction
    with transaction.atomic():
        [kept] = send(django_jobs, "video/uploaded", {"video_id": "v0", "url": "u"})
    assert [r.function_id for r in django_jobs.runs_for_event(kept)] == ["summarize-video"]


def test_django_view_and_status_through_the_test_client(
    django_jobs: Durable, db: psycopg.Connection[Any]
) -> None:
    from django.test import Client

    django_jobs.start(threads=2)
    client = Client()
    accepted = client.post("/videos", {"id": "vid_t1", "title": "Django talk", "url": "u"},
                           content_type="application/json")
    assert accepted.status_code == 202
    final = web_jobs.poll(lambda url: client.get(url).json(), accepted.json()["status_url"])
    assert final["status"] == "completed"
    assert ("Django talk", final["output"]["summary"]) in summary_of(db, django_jobs.schema)
    assert client.get("/runs/nope").status_code == 404


def test_django_worker_command_runs_until_sigterm(dsn: str, jobs: Durable) -> None:
    environment = {**os.environ, "PGDURABLE_DSN": dsn, "PGDURABLE_SCHEMA": jobs.schema,
                   "PYTHONPATH": str(EXAMPLES)}
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "django_app.py"), "pgdurable_worker", "--threads", "2"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with jobs.connection() as conn:
            event_id = web_jobs.add_video(jobs, conn, "Worker talk", "u")
        [run] = jobs.runs_for_event(event_id)
        assert jobs.wait_for_run(run.id, 60).status == "completed"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stdout.read() if worker.stdout else ""
    finally:
        worker.kill()


# -- the caller's transaction, from other connection holders ----------------------


def test_send_joins_a_transaction_of_the_app_s_own_pool(
    dsn: str, jobs: Durable, db: psycopg.Connection[Any]
) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with pytest.raises(RuntimeError), pool.connection() as conn:
            web_jobs.add_video(jobs, conn, "Lost", "u")
            raise RuntimeError("rolled back")  # the pool rolls the transaction back
        with pool.connection() as conn:
            event_id = web_jobs.add_video(jobs, conn, "Kept", "u")
    assert [t for t, _ in summary_of(db, jobs.schema)] == ["Kept"]
    assert len(jobs.runs_for_event(event_id)) == 1
    assert db.execute(f"SELECT count(*) FROM {jobs.schema}.events").fetchone() == (1,)


def test_send_joins_a_sqlalchemy_session(dsn: str, jobs: Durable, db: psycopg.Connection[Any]) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        for commit in (False, True):
            with Session(engine) as session:
                session.execute(text(f"INSERT INTO {jobs.schema}.videos (id, title) "
                                     "VALUES (:id, :title)"), {"id": f"s{commit}", "title": str(commit)})
                raw = session.connection().connection.driver_connection  # the psycopg Connection
                jobs.send("video/uploaded", {"video_id": f"s{commit}", "url": "u"}, conn=raw)
                if commit:
                    session.commit()  # else: closing the session rolls both back
    finally:
        engine.dispose()
    assert [t for t, _ in summary_of(db, jobs.schema)] == ["True"]
    assert db.execute(f"SELECT count(*) FROM {jobs.schema}.events").fetchone() == (1,)
