"""Notifications: batched digests, a trial cancelled by an event, a failure
handler, and a cron job.

- comments on a user's posts are batched into one digest email per user
  (`batch=`), sent when 5 have come in or 1 s after the first;
- a trial sleeps, then emails "trial over", unless the user is deleted
  first (`cancel_on=`);
- a declined charge fails for good and its `on_failure` handler emails the
  user;
- a cron job ticks every second (six-field cron: seconds last).

    python examples/notifications.py

With no PGDURABLE_DSN/DATABASE_URL set it runs on the embedded Postgres.
"""

from __future__ import annotations

import time
from typing import Any

from pgdurable import Batch, Cancel, Context, Durable, Event, NonRetriableError
from pgdurable.embedded import dsn_or_embedded


def build(
    dsn: str, schema: str = "notifications", *, trial: str = "2s"
) -> tuple[Durable, list[dict[str, Any]]]:
    """The app, and the outbox its stand-in mailer appends to."""
    app = Durable(dsn, schema=schema)
    outbox: list[dict[str, Any]] = []

    def mail(to: str, kind: str, **details: Any) -> None:
        outbox.append({"to": to, "kind": kind, **details})

    @app.function(id="comment-digest", event="comment/posted",
                  batch=Batch(max_size=5, timeout="1s", key="event.data.user"))
    def comment_digest(ctx: Context) -> int:
        comments = [e.data["text"] for e in ctx.events]
        ctx.step.run("mail", mail, ctx.event.data["user"], "digest", comments=comments)
        return len(comments)

    @app.function(id="trial", event="user/signed-up",
                  cancel_on=[Cancel(event="user/deleted", match="data.user")])
    def trial_reminder(ctx: Context) -> str:
        ctx.step.sleep("trial-period", trial)
        ctx.step.run("mail", mail, ctx.event.data["user"], "trial-over")
        return "reminded"

    def payment_failed(ctx: Context) -> None:
        assert ctx.error is not None
        ctx.step.run("mail", mail, ctx.event.data["user"], "payment-failed", reason=ctx.error.message)

    @app.function(id="charge", event="invoice/due", on_failure=payment_failed)
    def charge(ctx: Context) -> str:
        def call_bank() -> str:
            if ctx.event.data["card"] == "declined":
                raise NonRetriableError("card declined")
            return "paid"

        return str(ctx.step.run("call-bank", call_bank))

    @app.function(id="housekeeping", cron="* * * * * *")
    def housekeeping(ctx: Context) -> str:
        return str(ctx.event.data["tick"])

    return app, outbox


def send_demo_events(app: Durable) -> list[str]:
    """Seven comments for ann, two for bob; two trials, one user deleted;
    two invoices, one declined. Returns the trial events' ids."""
    app.send([Event("comment/posted", {"user": user, "text": f"comment {n}"})
              for n, user in enumerate(["ann"] * 7 + ["bob"] * 2)])
    trials = app.send([Event("user/signed-up", {"user": u}) for u in ("ann", "bob")])
    app.send("user/deleted", {"user": "bob"})
    app.send([Event("invoice/due", {"user": "ann", "card": "ok"}),
              Event("invoice/due", {"user": "bob", "card": "declined"})])
    return trials


def main() -> None:
    app, outbox = build(dsn_or_embedded())
    app.migrate()
    app.start(threads=4)
    try:
        trials = send_demo_events(app)
        for event_id in trials:
            for run in app.runs_for_event(event_id):
                print(f"trial {run.id}: {app.wait_for_run(run.id, 60).status}")
        time.sleep(2)  # let the timed-out digests and a cron tick or two go out
        for message in outbox:
            print(message)
        print(f"cron runs so far: {len(app.list_runs(function='housekeeping'))}")
    finally:
        app.stop()


if __name__ == "__main__":
    main()
