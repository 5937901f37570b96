"""Django: events sent in Django's own transaction, a status view, and the
worker as a management command. One file serves as settings, urls, views
and manage.py.

    pip install 'pgdurable[django,embedded]'
    python examples/django_app.py demo                           # a demo through Django's test client
    python examples/django_app.py pgdurable_worker --threads 2   # a worker, until Ctrl-C
    python examples/django_app.py runserver                      # serve (run a worker beside it)
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import django
import web_jobs
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from psycopg.conninfo import conninfo_to_dict

from pgdurable import Durable
from pgdurable.embedded import dsn_or_embedded
from pgdurable.integrations.django import durable_app, send


def configure(dsn: str, schema: str = "web_jobs") -> Durable:
    """Django settings for `dsn`, with the jobs' Durable app as PGDURABLE_APP."""
    params = conninfo_to_dict(dsn)
    durable = web_jobs.build(dsn, schema)
    settings.configure(
        DEBUG=True, SECRET_KEY="example-only", ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["pgdurable.integrations.django"],
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": params.get("dbname", "postgres"),
            "USER": params.get("user", ""), "PASSWORD": params.get("password", ""),
            "HOST": params.get("host", ""), "PORT": params.get("port", ""),
        }},
        PGDURABLE_APP=durable,
    )
    django.setup()
    return durable


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    durable = durable_app()
    with transaction.atomic():  # Django's transaction: the row and the event commit together
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {durable.schema}.videos (id, title, url) VALUES (%s, %s, %s)",
                           [body["id"], body["title"], body["url"]])
        [event_id] = send(durable, "video/uploaded", {"video_id": body["id"], "url": body["url"]})
    [run] = durable.runs_for_event(event_id)
    return JsonResponse({"run_id": run.id, "status_url": f"/runs/{run.id}"}, status=202)


def run_status(request: HttpRequest, run_id: str) -> JsonResponse:
    status = web_jobs.run_status(durable_app(), run_id)
    if status is None:
        return JsonResponse({"error": f"no run {run_id}"}, status=404)
    return JsonResponse(status)


urlpatterns = [path("videos", upload), path("runs/<str:run_id>", run_status)]


def demo(durable: Durable) -> None:
    from django.test import Client

    web_jobs.set_up(durable).start(threads=2)
    try:
        client = Client()
        accepted = client.post("/videos", {"id": f"vid_{uuid.uuid4().hex[:8]}", "title": "Talk",
                                           "url": "https://v.example/1"},
                               content_type="application/json").json()
        print(accepted)
        print(web_jobs.poll(lambda url: client.get(url).json(), accepted["status_url"])["output"])
    finally:
        durable.stop()


def main(argv: list[str]) -> None:
    durable = configure(dsn_or_embedded(), os.environ.get("PGDURABLE_SCHEMA", "web_jobs"))
    if argv[1:] == ["demo"]:
        demo(durable)
    else:
        from django.core.management import execute_from_command_line

        execute_from_command_line(argv)


if __name__ == "__main__":
    main(sys.argv)
