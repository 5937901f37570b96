"""FastAPI and Starlette: worker threads that live as long as the app.

    app = FastAPI(lifespan=pgdurable.integrations.starlette.lifespan(durable))
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool

from .._app import Durable
from .._worker import DEFAULT_ASYNC_RUNS


def lifespan(
    durable: Durable, *, threads: int = 4, async_runs: int = DEFAULT_ASYNC_RUNS,
    migrate: bool = False, stop_timeout: float = 30.0,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan that starts the worker (`threads` threads, `async_runs`
    async handlers at once: see Durable.start) when the app starts (after
    `migrate()` if asked) and, when it shuts down, closes the async pool its
    endpoints used and drains the worker."""

    @asynccontextmanager
    async def run_workers(_app: Any) -> AsyncIterator[None]:
        if migrate:
            await run_in_threadpool(durable.migrate)
        await run_in_threadpool(partial(durable.start, threads, async_runs=async_runs))
        try:
            yield
        finally:
            await durable.aclose()
            await run_in_threadpool(durable.stop, stop_timeout)

    return run_workers
