"""Onboarding emails: sleep, wait for an event, invoke, send events once.

A user signs up; we send a welcome email, give them some time, then wait
for them to activate. If they do not, we score the lead (a child run) and
send a nudge. Durations are short here so the demo finishes quickly:

    python examples/onboarding.py

With no PGDURABLE_DSN/DATABASE_URL set it runs on the embedded Postgres.
"""

from __future__ import annotations

import time
from typing import Any

from pgdurable import Context, Durable, Event
from pgdurable.embedded import dsn_or_embedded


def build(
    dsn: str, schema: str = "onboarding", *, grace: str = "1s", patience: str = "2s"
) -> tuple[Durable, list[dict[str, Any]]]:
    """The app, and the outbox its stand-in mailer appends to."""
    app = Durable(dsn, schema=schema)
    outbox: list[dict[str, Any]] = []

    @app.function(id="lead-score", event="lead/score-requested")
    def lead_score(ctx: Context) -> int:
        return len(ctx.event.data["email"]) % 10  # a stand-in for a scoring model

    @app.function(id="send-email", event="email/send")
    def send_email(ctx: Context) -> None:
        outbox.append(dict(ctx.event.data))

    @app.function(id="onboarding", event="user/signed-up")
    def onboarding(ctx: Context) -> str:
        user = ctx.event.data
        ctx.step.send_event("welcome", Event("email/send", {"to": user["email"], "kind": "welcome"}))
        ctx.step.sleep("grace-period", grace)
        activated = ctx.step.wait_for_event(
            "activation", event="user/activated", match="data.user_id", timeout=patience)
        if activated is not None:
            return "activated"
        score = ctx.step.invoke("score", function=lead_score, data={"email": user["email"]})
        ctx.step.send_event("nudge", Event("email/send", {"to": user["email"], "kind": "nudge"}))
        return f"nudged (lead score {score})"

    return app, outbox


def activate_when_sleeping(app: Durable, event_id: str, user_id: str) -> None:
    """Send `user/activated` once the user's run is in its grace period:
    the wait sees events received from the start of the step before it."""
    [run] = [r for r in app.runs_for_event(event_id) if r.function_id == "onboarding"]
    while (current := app.get_run(run.id)) is not None and current.status != "sleeping":
        time.sleep(0.05)
    app.send("user/activated", {"user_id": user_id})


def main() -> None:
    app, outbox = build(dsn_or_embedded())
    app.migrate()
    app.start(threads=4)
    try:
        signups = {"u1": "ada@example.com", "u2": "grace@example.com"}
        ids = app.send([Event("user/signed-up", {"user_id": u, "email": e}) for u, e in signups.items()])
        activate_when_sleeping(app, ids[0], "u1")  # ada activates; grace does not
        for user, event_id in zip(signups, ids, strict=True):
            [run] = app.runs_for_event(event_id)
            print(f"{user}: {app.wait_for_run(run.id, 60).output}")
        print("emails sent:", sorted((m["to"], m["kind"]) for m in outbox))
    finally:
        app.stop()


if __name__ == "__main__":
    main()
