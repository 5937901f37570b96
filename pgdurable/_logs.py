"""Log records that say which run they are about."""

from __future__ import annotations

import logging

from ._context import CURRENT_RUN, CURRENT_STEP
from ._telemetry import trace_ids


def run_fields(run_id: str, function_id: str) -> dict[str, str]:
    """The `extra` of the worker's records about a run."""
    return {"run_id": run_id, "function_id": function_id}


class RunLogFilter(logging.Filter):
    """Add to a handler (or a logger) of your app: each record logged while
    a run's handler executes, by any logger, gets the attributes `run_id`,
    `function_id`, `step` and, when the run is traced, `trace_id` and
    `span_id`; other records get them as None, so a format can name them."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = CURRENT_RUN.get()
        ids = trace_ids() if current is not None else {}
        fields = {"run_id": None if current is None else current[1].run_id,
                  "function_id": None if current is None else current[1].function_id,
                  "step": CURRENT_STEP.get(), "trace_id": ids.get("trace_id"),
                  "span_id": ids.get("span_id")}
        for name, value in fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
