"""The dashboard's pages and JSON routes: status codes, content, actions
(403 when read-only or refused), and their rows in operator_audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import receipt_story, run_of, wait_for_status
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from pgdurable import Durable
from pgdurable.dashboard import create_app


@pytest.fixture
def story(app: Durable) -> dict[str, str]:
    return receipt_story(app)


def client(app: Durable, prefix: str = "", **options: Any) -> TestClient:
    """The dashboard mounted at `prefix` of a host app, as a browser on it sees it."""
    board = create_app(app, **options)
    host = Starlette(routes=[Mount(prefix, board)]) if prefix else board
    return TestClient(host, base_url="http://testserver", follow_redirects=False)


def test_every_page_renders_under_a_prefix(app: Durable, story: dict[str, str]) -> None:
    web = client(app, "/ops/pgdurable")
    pages = {
        "/ops/pgdurable/": ["receipt", "Recent failures", "no total in the text"],
        "/ops/pgdurable/runs": [story["ok"], story["bad"], story["asleep"]],
        "/ops/pgdurable/runs?status=failed": [story["bad"]],
        f"/ops/pgdurable/runs/{story['bad']}": ["failed at step", "total", "ValueError",
                                              "no total in the text", "Traceback"],
        f"/ops/pgdurable/runs/{story['asleep']}": ["sleeping", "nap"],
        "/ops/pgdurable/functions": ["receipt/uploaded"],
        "/ops/pgdurable/workers": [app._worker.id],  # type: ignore[union-attr]
    }
    for path, expected in pages.items():
        page = web.get(path)
        assert page.status_code == 200, (path, page.text)
        for text in expected:
            assert text in page.text, (path, text)
        # links and assets follow the prefix
        assert 'href="http://testserver/ops/pgdurable/static/style.css"' in page.text, path
    failed_only = web.get("/ops/pgdurable/runs?status=failed").text
    assert story["ok"] not in failed_only
    assert web.get("/ops/pgdurable/static/dashboard.js").status_code == 200


def test_search_goes_to_the_run_or_event(app: Durable, story: dict[str, str]) -> None:
    web = client(app)
    found = web.get("/runs", params={"q": story["bad"]})
    assert found.status_code == 303 and found.headers["location"].endswith(f"/runs/{story['bad']}")
    event_id = app.get_run(story["bad"]).event_ids[0]  # type: ignore[union-attr]
    found = web.get("/runs", params={"q": event_id})
    assert found.status_code == 303 and found.headers["location"].endswith(f"/events/{event_id}")
    event = web.get(f"/events/{event_id}")
    assert event.status_code == 200 and "b.png" in event.text and story["bad"] in event.text
    assert web.get("/runs", params={"q": "nothing-like-it"}).status_code == 404
    assert web.get("/runs/0192b3c4-0000-7000-8000-000000000000").status_code == 404
    assert web.get("/events/nope").status_code == 404
    bad = web.get("/runs", params={"since": "last tuesday"})
    assert bad.status_code == 400 and "neither an ISO 8601 time" in bad.text


def test_json_routes(app: Durable, story: dict[str, str]) -> None:
    web = client(app)
    listed = web.get("/api/runs", params={"function": "receipt", "limit": 2}).json()
    assert [r["id"] for r in listed["runs"]] == [story["asleep"], story["bad"]]
    assert listed["after"] == story["bad"]
    rest = web.get("/api/runs", params={"after": listed["after"]}).json()
    assert [r["id"] for r in rest["runs"]] == [story["ok"]] and rest["after"] is None
    detail = web.get(f"/api/runs/{story['bad']}").json()
    assert detail["status"] == "failed" and "Traceback" in detail["error"]["traceback"]
    assert [(s["key"], s["status"]) for s in detail["steps"]] == [("ocr", "completed"),
                                                                   ("total", "failed")]
    assert web.get("/api/runs/not-a-uuid").status_code == 400
    assert web.get("/api/runs/0192b3c4-0000-7000-8000-000000000000").json()["error"].startswith("no run")
    assert web.get("/api/runs", params={"status": "lost"}).status_code == 400
    assert web.get("/api/runs", params={"limit": "0"}).status_code == 400
    assert web.get("/healthz").json()["ok"] is True


def test_read_only_by_default(app: Durable, story: dict[str, str], db: psycopg.Connection[Any]) -> None:
    web = client(app)
    for action in ("cancel", "replay", "fork"):
        answer = web.post(f"/api/runs/{story['asleep']}/{action}", json={"from_step": "ocr"})
        assert answer.status_code == 403 and "allow_actions=True" in answer.json()["error"]
        page = web.post(f"/runs/{story['asleep']}/{action}", data={"from_step": "ocr"})
        assert page.status_code == 403
    assert "read-only" in web.get("/").text
    assert "<h2>Actions</h2>" not in web.get(f"/runs/{story['bad']}").text
    assert web.get("/bulk", params={"action": "cancel", "function": "receipt"}).status_code == 403
    assert app.get_run(story["asleep"]).status == "sleeping"  # type: ignore[union-attr]
    assert db.execute(f"SELECT count(*) FROM {app.schema}.operator_audit").fetchone() == (0,)


def test_actions_when_allowed_are_audited_as_the_user(
    app: Durable, story: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    asked: list[str] = []

    def authorize(request: Request, action: str) -> bool:
        asked.append(action)
        return request.headers.get("x-role") == "admin"

    web = client(app, allow_actions=True, authorize=authorize)
    refused = web.post(f"/api/runs/{story['bad']}/replay")
    assert refused.status_code == 403 and refused.json()["error"] == "not allowed to replay"
    admin = {"x-role": "admin"}
    forked = web.post(f"/api/runs/{story['bad']}/fork", headers=admin,
                      json={"from_step": "total", "data": {"key": "d.png"}}).json()["run_id"]
    assert app.wait_for_run(forked, 20).output == {"text": "text of b.png", "total": 12.5}
    page = web.post(f"/runs/{story['ok']}/replay", headers=admin)
    assert page.status_code == 303 and "notice=replay" in page.headers["location"]
    cancelled = web.post(f"/api/runs/{story['asleep']}/cancel", headers=admin).json()
    assert cancelled == {"cancelled": True}
    assert app.get_run(story["asleep"]).status == "cancelled"  # type: ignore[union-attr]
    bad_fork = web.post(f"/api/runs/{story['bad']}/fork", headers=admin, json={"from_step": "x"})
    assert bad_fork.status_code == 404 and "has no step 'x'" in bad_fork.json()["error"]
    cross_site = web.post(f"/api/runs/{story['bad']}/replay",
                          headers=admin | {"origin": "http://evil.example"})
    assert cross_site.status_code == 403
    rows = db.execute(f"SELECT action, run_id::text, who FROM {app.schema}.operator_audit "
                      "ORDER BY at").fetchall()
    assert rows == [("fork", story["bad"], "dashboard:testclient"),
                    ("replay", story["ok"], "dashboard:testclient"),
                    ("cancel", story["asleep"], "dashboard:testclient")]
    assert asked[:2] == ["replay", "fork"]


def test_bulk_cancel_shows_the_count_then_acts(app: Durable, make_app: Callable[..., Durable],
                                              story: dict[str, str]) -> None:
    more = [run_of(app, "receipt/uploaded", {"key": f"z{n}.png", "nap": True}) for n in range(3)]
    for run_id in more:
        wait_for_status(app, run_id, "sleeping")
    web = client(app, allow_actions=True)
    confirm = web.get("/bulk", params={"action": "cancel", "function": "receipt"})
    assert confirm.status_code == 200 and "<strong>4</strong> runs match" in confirm.text
    assert web.get("/bulk", params={"action": "cancel"}).status_code == 400  # no filter
    done = web.post("/bulk", data={"action": "cancel", "function": "receipt"})
    assert done.status_code == 303 and "cancel%3A+4+runs" in done.headers["location"]
    assert {app.get_run(r).status for r in [story["asleep"], *more]} == {"cancelled"}  # type: ignore[union-attr]
