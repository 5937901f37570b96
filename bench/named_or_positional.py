"""What naming the fields of the hot batches would cost: the run specs and
events a send passes to SQL (`send_events`), and the journal entries a
flush writes, as JSON arrays (positional, as now) or JSON objects (named).

Each round encodes a batch in Python (json.dumps, as _store does) and has
Postgres read every field of every row, the way the SQL functions do; the
figures are per row, the median of the rounds.

    python bench/named_or_positional.py [--rows 1000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import psycopg
from common import DSN, describe

SHAPES: dict[str, tuple[list[str], str]] = {
    # name: (fields, how SQL reads one row `r` of each field: {f} is the field's accessor)
    "run spec": (["event", "function", "retries"],
                 "({0})::int + length({1}) + ({2})::int"),
    "event": (["id", "name", "data", "ts"],
              "length({0}) + length({1}) + length(({2})::text) + coalesce(length({3}), 0)"),
    "journal entry": (["run_id", "token", "key", "position", "status", "output", "error",
                       "attempts", "started_at"],
                      "length({0}) + ({1})::int + length({2}) + ({3})::int + length({4}) "
                      "+ length(coalesce({5}, '')) + length(coalesce({6}, '')) + ({7})::int "
                      "+ length({8})"),
}


def rows_of(shape: str, count: int) -> list[list[Any]]:
    values: dict[str, Any] = {
        "event": 1, "function": "process-receipt", "retries": 3, "id": str(uuid.uuid4()),
        "name": "receipt/process", "data": {"user_id": "u1", "file_key": "uploads/u1/1.jpg"},
        "ts": None, "run_id": str(uuid.uuid4()), "token": 7, "key": "ocr", "position": 2,
        "status": "completed", "output": {"total": 12.5}, "error": None, "attempts": 1,
        "started_at": "2026-11-30T06:00:00+00:00",
    }
    return [[values[f] for f in SHAPES[shape][0]] for _ in range(count)]


def measure(conn: psycopg.Connection[Any], shape: str, named: bool, rows: int,
            rounds: int) -> tuple[float, float]:
    """Median microseconds per row: encoding in Python, reading in SQL."""
    fields, expression = SHAPES[shape]
    accessors = [f"(r ->> '{f}')" if named else f"(r ->> {i})" for i, f in enumerate(fields)]
    query = (f"SELECT sum({expression.format(*accessors)}) "
             "FROM jsonb_array_elements(%s::jsonb) AS r")
    batch = rows_of(shape, rows)
    encode, read = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        items = [dict(zip(fields, row, strict=True)) for row in batch] if named else batch
        text = json.dumps(items)
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        conn.execute(query, (text,), prepare=True).fetchone()
        read.append(time.perf_counter() - start)
    return (statistics.median(encode) * 1e6 / rows, statistics.median(read) * 1e6 / rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with psycopg.connect(DSN, autocommit=True) as conn:
        for shape in SHAPES:
            (pe, pr), (ne, nr) = (measure(conn, shape, named, args.rows, args.rounds)
                                  for named in (False, True))
            print(f"{shape:>13}: positional {pe:.2f} + {pr:.2f} us/row, named {ne:.2f} + {nr:.2f} "
                  f"us/row (encode + read): named costs {ne + nr - pe - pr:+.2f} us/row "
                  f"({(ne + nr) / (pe + pr) - 1:+.0%})")
    print(f"{args.rows} rows a batch, median of {args.rounds} rounds; {describe()}")


if __name__ == "__main__":
    main()
