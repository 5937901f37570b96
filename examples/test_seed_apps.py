"""The seeds' apps tested as their users would test them: each function run
to its end at once with `pgdurable.testing.execute` (days of sleeps and
waits pass in milliseconds), outside calls given in `steps=`, on the server
of the pytest plugin's `pgdurable_dsn` fixture, a fresh schema each
(`pgdurable_schema`).

    pytest examples/test_seed_apps.py
"""

from __future__ import annotations

import notifications
import onboarding
import pytest
import receipts

from pgdurable import Event
from pgdurable.testing import execute


@pytest.fixture
def schema(pgdurable_schema: str) -> str:
    return pgdurable_schema


def test_a_receipt_is_read_with_ocr_given(pgdurable_dsn: str, schema: str) -> None:
    app = receipts.build(pgdurable_dsn, schema, failure_rate=1.0)  # the real OCR always fails
    app.migrate()
    try:
        run = execute(app, "process-receipt",
                      {"user_id": "u1", "file_key": "uploads/u1/1.jpg", "original_name": "1.jpg"},
                      steps={"ocr": {"merchant": "Corner Cafe", "total": 12.5, "lines": 3}})
    finally:
        app.stop()
    assert run.status == "completed"
    assert run.output == {"user_id": "u1", "file": "1.jpg", "merchant": "Corner Cafe",
                          "total": 12.5, "lines": 3}


def test_a_receipt_whose_ocr_keeps_failing_fails_after_its_retries(
    pgdurable_dsn: str, schema: str
) -> None:
    app = receipts.build(pgdurable_dsn, schema, failure_rate=1.0)
    app.migrate()
    try:
        run = execute(app, "process-receipt",
                      {"user_id": "u1", "file_key": "k", "original_name": "2.jpg"})
        steps = {s.key: s for s in app.get_steps(run.id)}
    finally:
        app.stop()
    assert (run.status, run.attempt) == ("failed", 4)  # four retries, their backoff passed at once
    assert steps["download-file"].attempts == 1  # downloaded once, whatever the retries
    assert run.error is not None and "OCR model timed out" in run.error.message


def test_onboarding_nudges_a_user_who_does_not_activate_within_a_week(
    pgdurable_dsn: str, schema: str
) -> None:
    app, _ = onboarding.build(pgdurable_dsn, schema, grace="3d", patience="7d")
    app.migrate()
    try:
        run = execute(app, "onboarding", {"user_id": "u1", "email": "ada@example.com"},
                      steps={"welcome": ["welcome-sent"], "nudge": ["nudge-sent"]})
        journal = [(s.key, s.attempts) for s in app.get_steps(run.id)]
    finally:
        app.stop()
    assert run.output == "nudged (lead score 5)"  # the lead score ran for real, as a child
    # Given steps are journaled first, with no attempt; the others in the order they ran.
    assert journal == [("nudge", 0), ("welcome", 0), ("grace-period", 1), ("activation", 1),
                       ("score", 1)]


def test_onboarding_ends_when_the_user_activates(pgdurable_dsn: str, schema: str) -> None:
    app, _ = onboarding.build(pgdurable_dsn, schema, grace="3d", patience="7d")
    app.migrate()
    try:
        run = execute(app, "onboarding", {"user_id": "u1", "email": "ada@example.com"},
                      steps={"welcome": ["welcome-sent"],
                             "activation": Event("user/activated", {"user_id": "u1"})})
        sent = app.list_events(name="email/send")
    finally:
        app.stop()
    assert run.output == "activated"
    assert sent == []  # the welcome step was given: no email was sent


def test_a_trial_reminder_after_two_weeks(pgdurable_dsn: str, schema: str) -> None:
    app, outbox = notifications.build(pgdurable_dsn, schema, trial="14d")
    app.migrate()
    try:
        run = execute(app, "trial", {"user": "u1"})
    finally:
        app.stop()
    assert run.output == "reminded"
    assert outbox == [{"to": "u1", "kind": "trial-over"}]
