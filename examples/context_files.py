"""Context file processing (seed 001): when a file is uploaded, fetch it from
the app's own table, parse it with an LLM (a local stand-in), and store the
summary back, each as a durable step. The table is under row-level
security, so the job reads and writes it through audited RLS bypasses.

    python examples/context_files.py
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel

import pgdurable
from pgdurable import Context, Durable
from pgdurable.embedded import dsn_or_embedded

BYPASS_TAG = "jobs:process-context-file"


class FileUploaded(BaseModel):
    file_id: str
    context_id: str
    uploaded_by_id: str


class Parsed(BaseModel):
    summary: str
    key_points: list[str]


def parse_document_with_ai(content: str, name: str) -> Parsed:
    """Stand-in for an LLM call: the first sentence, and each sentence as a point."""
    sentences = [s.strip() for s in content.replace("\n", " ").split(".") if s.strip()]
    return Parsed(summary=f"{name}: {sentences[0] if sentences else '(empty)'}",
                  key_points=sentences[:5])


def build(dsn: str, schema: str = "context_files") -> Durable:
    app = Durable(dsn, schema=schema)
    app.event("context/file.uploaded", FileUploaded)
    table = sql.Identifier(schema, "context_files")

    def store_result(conn: psycopg.Connection[Any], file_id: str, parsed: Parsed) -> None:
        pgdurable.rls_bypass(conn, BYPASS_TAG)  # for this transaction, audited
        conn.execute(sql.SQL("UPDATE {} SET summary = %s, key_points = %s WHERE id = %s").format(table),
                     (parsed.summary, parsed.key_points, file_id))

    @app.function(id="process-context-file", event="context/file.uploaded", retries=3)
    def process_context_file(ctx: Context) -> dict[str, Any]:
        event = FileUploaded.model_validate(ctx.event.data)

        def fetch_file() -> dict[str, Any]:
            # The job has no user session: under the table's RLS policy it
            # would see no row. It says so, with a tag the audit trail keeps.
            with ctx.rls_bypass(BYPASS_TAG) as conn:
                row = conn.execute(sql.SQL("SELECT name, content FROM {} WHERE id = %s").format(
                    table), (event.file_id,)).fetchone()
            if row is None:
                raise LookupError(f"file {event.file_id} does not exist")
            return {"name": row[0], "content": row[1]}

        file = ctx.step.run("fetch-file", fetch_file)
        ctx.logger.info("parsing %s", file["name"])
        # The return annotation of parse_document_with_ai (-> Parsed) turns the
        # journaled JSON back into a Parsed, on first execution and on replay.
        parsed = ctx.step.run("parse-document", parse_document_with_ai, file["content"], file["name"])
        # A transactional step: the update commits with the step's journal
        # entry, so it happens exactly once whatever crashes.
        ctx.step.transaction("store-result", store_result, event.file_id, parsed)
        return {"success": True, "file_id": event.file_id}

    return app


def create_tables(app: Durable) -> None:
    """The app's table, under RLS: a user sees the files they uploaded; jobs
    see them all only through an RLS bypass."""
    table = sql.Identifier(app.schema, "context_files")
    with app.connection() as conn:
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, owner text, name text, "
            "content text, summary text, key_points text[])").format(table))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
        conn.execute(sql.SQL("DROP POLICY IF EXISTS by_owner ON {}").format(table))
        conn.execute(sql.SQL(
            "CREATE POLICY by_owner ON {} USING (owner = current_setting('app.user_id', true) "
            "OR current_setting('app.rls_bypass', true) = 'on')").format(table))


def upload_file(app: Durable, name: str, content: str, context_id: str, user_id: str) -> str:
    """The web request: store the file and send the event in one transaction."""
    file_id = f"file_{uuid.uuid4().hex[:8]}"
    with app.connection() as conn:
        conn.execute(sql.SQL("INSERT INTO {} (id, owner, name, content) VALUES (%s, %s, %s, %s)"
                             ).format(sql.Identifier(app.schema, "context_files")),
                     (file_id, user_id, name, content))
        app.send("context/file.uploaded", FileUploaded(
            file_id=file_id, context_id=context_id, uploaded_by_id=user_id), conn=conn)
    return file_id


def main() -> None:
    app = build(dsn_or_embedded())
    app.migrate()
    create_tables(app)
    file_id = upload_file(app, "roadmap.md", "Ship the beta in May. Hire two engineers. "
                          "Cut cloud costs by a third.", "ctx_456", "user_789")
    app.start(threads=2)
    try:
        [run] = app.list_runs(function="process-context-file", limit=1)
        print(app.wait_for_run(run.id, timeout=60))
        with app.connection() as conn:
            print(conn.execute(sql.SQL("SELECT summary, key_points FROM {} WHERE id = %s").format(
                sql.Identifier(app.schema, "context_files")), (file_id,)).fetchone())
            for row in conn.execute(sql.SQL("SELECT kind, tag, step_key, db_role FROM {} "
                                            "ORDER BY at").format(
                                                sql.Identifier(app.schema, "rls_audit"))):
                print("audit:", row)
    finally:
        app.stop()


if __name__ == "__main__":
    sys.exit(main())
