"""Fork: a receipt fails at its `total` step because of a bug; once the
fix is deployed, a fork of the failed run goes on from `total`, reusing
the OCR it already paid for.

    python examples/fork_fix.py

With no PGDURABLE_DSN/DATABASE_URL set it runs on the embedded Postgres.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pgdurable import Context, Durable, Run
from pgdurable.embedded import dsn_or_embedded


def build(dsn: str, schema: str = "fork_fix") -> tuple[Durable, Counter[str], dict[str, bool]]:
    """The app, a count of the calls each step made, and the "deployed fix" switch."""
    app = Durable(dsn, schema=schema)
    calls: Counter[str] = Counter()
    fixed = {"total": False}

    def ocr(key: str) -> str:
        calls["ocr"] += 1  # the expensive, paid call
        return f"TOTAL 12,50 EUR ({key})"

    def total(text: str) -> float:
        calls["total"] += 1
        amount = text.split()[1]
        if not fixed["total"]:
            return float(amount)  # the bug: "12,50" is not a float
        return float(amount.replace(",", "."))

    @app.function(id="process-receipt", event="receipt/uploaded", retries=0)
    def process_receipt(ctx: Context) -> dict[str, Any]:
        text = ctx.step.run("ocr", ocr, ctx.event.data["key"])
        return {"total": ctx.step.run("total", total, text)}

    return app, calls, fixed


def fail_then_fork(app: Durable, fixed: dict[str, bool]) -> tuple[Run, Run]:
    """Run a receipt into the bug, deploy the fix, fork from `total`."""
    [event_id] = app.send("receipt/uploaded", {"key": "r-1.jpg"})
    [run] = app.runs_for_event(event_id)
    failed = app.wait_for_run(run.id, 60)
    fixed["total"] = True  # the fix is deployed
    # --8<-- [start:fork]
    new_id = app.fork(failed.id, from_step="total")  # "ocr" comes from the journal
    forked = app.wait_for_run(new_id, 60)
    assert forked.forked_from == failed.id
    # --8<-- [end:fork]
    return failed, forked


def main() -> None:
    app, calls, fixed = build(dsn_or_embedded())
    app.migrate()
    app.start(threads=2)
    try:
        failed, forked = fail_then_fork(app, fixed)
        print(f"run {failed.id}: {failed.status} ({failed.error.message if failed.error else ''})")
        print(f"fork {forked.id}: {forked.status}, output {forked.output}")
        print(f"calls: {dict(calls)}")  # ocr: 1, total: 2
    finally:
        app.stop()


if __name__ == "__main__":
    main()
