"""Web framework integrations, each behind its extra: `starlette` (FastAPI
and Starlette), `flask` and `django`."""
