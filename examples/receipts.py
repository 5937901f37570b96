"""Receipt OCR (seed 000): a bulk upload fans out one event per file; each run
downloads the file, then runs OCR (a local stand-in that fails at random, so
you see retries), then stores the result. Durable steps mean a retry of the
OCR never downloads the file again.

    python examples/receipts.py            # 10 receipts
    python examples/receipts.py 25         # 25 receipts

With no PGDURABLE_DSN / DATABASE_URL it starts a private Postgres in
./.pgdurable (kept between runs). PGDURABLE_SCHEMA picks the schema.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import sys
import time

from pydantic import BaseModel

from pgdurable import Context, Durable, Event, Run
from pgdurable.embedded import dsn_or_embedded


# --8<-- [start:models]
class ReceiptProcess(BaseModel):
    user_id: str
    file_key: str
    original_name: str


class Receipt(BaseModel):
    merchant: str
    total: float
    lines: int
# --8<-- [end:models]


def say(text: str) -> None:
    sys.stdout.write(text + "\n")  # one write per line: runs print from several threads
    sys.stdout.flush()


def download(file_key: str) -> str:
    """Stand-in for object storage: the file's bytes, base64 as in the seed."""
    time.sleep(0.05)
    return base64.b64encode(hashlib.sha256(file_key.encode()).digest() * 64).decode()


def ocr(name: str, content: str, failure_rate: float) -> Receipt:
    """Stand-in for an AI OCR call: slow, and fails now and then."""
    time.sleep(0.1)
    if random.random() < failure_rate:
        raise TimeoutError("OCR model timed out")
    digest = hashlib.sha256(content.encode()).digest()
    merchants = ["Corner Cafe", "Book Nook", "Fuel Stop", "Green Grocer"]
    return Receipt(merchant=merchants[digest[0] % 4], total=round(digest[1] * 1.37, 2),
                   lines=1 + digest[2] % 9)


# --8<-- [start:build]
def build(dsn: str, schema: str = "receipts", failure_rate: float = 0.3) -> Durable:
    app = Durable(dsn, schema=schema, retry_backoff=("200ms", "2s"))
    app.event("receipt/process", ReceiptProcess)

    @app.function(id="process-receipt", event="receipt/process", retries=4)
    def process_receipt(ctx: Context) -> dict[str, object]:
        data = ReceiptProcess.model_validate(ctx.event.data)
        name = data.original_name

        def fetch() -> str:
            content = download(data.file_key)
            say(f"  {name:<16} downloaded {len(content) * 3 // 4:,} bytes")
            return content

        # On a retry the handler runs again from the top; this step returns
        # its journaled value instead of downloading again.
        content: str = ctx.step.run("download-file", fetch)

        def read_receipt() -> Receipt:
            try:
                return ocr(name, content, failure_rate)
            except TimeoutError as exc:
                say(f"  {name:<16} OCR attempt {ctx.attempt + 1} failed: {exc}; will retry")
                raise

        receipt: Receipt = ctx.step.run("ocr", read_receipt)
        say(f"  {name:<16} OCR done: {receipt.merchant}, {receipt.total:.2f}")
        return {"user_id": data.user_id, "file": name, **receipt.model_dump()}

    return app
# --8<-- [end:build]


# --8<-- [start:upload]
def upload(app: Durable, user_id: str, count: int) -> list[str]:
    """The bulk upload: one event per file, sent in one round trip."""
    events = [
        Event("receipt/process", ReceiptProcess(
            user_id=user_id, file_key=f"uploads/{user_id}/{n}", original_name=f"receipt-{n:02}.jpg"))
        for n in range(1, count + 1)
    ]
    return app.send(events)
# --8<-- [end:upload]


def report(runs: list[Run]) -> None:
    say(f"\n{'file':<18}{'status':<11}{'merchant':<14}{'total':>8}  retries")
    for run in runs:
        out = run.output or {}
        say(f"{out.get('file', run.id[:8]):<18}{run.status:<11}{out.get('merchant', '-'):<14}"
            f"{out.get('total', 0):>8.2f}  {run.attempt}")


# --8<-- [start:main]
def main(count: int = 10) -> None:
    from_env = os.environ.get("PGDURABLE_DSN") or os.environ.get("DATABASE_URL")
    say("database: " + ("PGDURABLE_DSN / DATABASE_URL" if from_env else
                        "a private PostgreSQL in ./.pgdurable (set PGDURABLE_DSN to use yours)"))
    app = build(dsn_or_embedded(), os.environ.get("PGDURABLE_SCHEMA", "receipts"))
    app.migrate()
    started = time.monotonic()
    event_ids = upload(app, "user-1", count)
    say(f"uploaded {count} receipts: {count} events sent, one run each\n")
    app.start(threads=4)
    try:
        runs = [app.wait_for_run(r.id, timeout=120) for e in event_ids for r in app.runs_for_event(e)]
    finally:
        app.stop()
    report(runs)
    done = sum(r.status == "completed" for r in runs)
    say(f"\n{done}/{len(runs)} completed in {time.monotonic() - started:.1f} s")
# --8<-- [end:main]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
