"""Replay: what one execution of a run knows.

A handler runs from the top on every attempt. Each step looks its key up in
the journal loaded with the claim: a completed step returns its journaled
value without executing, a failed one raises `StepError` again, and a new one
executes and hands its entry to the worker's journal writer.

Journal writes are group-committed and not awaited when a step finishes;
instead a step waits, before executing anything new, until every earlier
entry of its run is committed. So no step's code runs before the steps it
follows are durable, and a crash can only re-execute the last step that had
finished but not yet committed, as if it had been interrupted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol

import psycopg

from . import _serde as serde
from ._control import Cancelled, Park, Suspend
from ._events import Event
from ._parallel import claim_step_id, in_branch
from ._records import Checkpoint, ClaimedRow, DbTime, Finish, StepRecord, WaitSpec
from ._retries import Backoff, error_json, gives_up, retry_time
from ._rls import Rls
from ._turns import lent_turn
from .errors import NonRetriableError, StepError, StepOrderError

MAX_STEP_ID_LENGTH = 512

# How old the latest answer to "was this run asked to cancel?" may be when a
# step starts (counted from when it was asked); an older one is asked again.
# `app.cancel()` returns only this long after its commit, so no step starts,
# after it returns, on an answer given before the cancel.
FRESH = 0.1


class Hearing:
    """What a worker's LISTEN connection vouches for: every cancel committed
    after it began listening and before its latest barrier (a round trip
    whose answer follows every notification committed before it was sent)
    has been heard. A cancel committed before it listened, or while it was
    away, was not: a run whose latest answer is older must ask."""

    _NOTHING = (float("inf"), float("-inf"))

    def __init__(self) -> None:
        self._span = self._NOTHING  # (listening since, barrier): monotonic times, replaced whole
        self._began = threading.Event()

    def listening(self) -> None:
        """LISTEN has just taken effect."""
        self._span = (time.monotonic(), float("-inf"))
        self._began.set()

    def first_listen(self, timeout: float) -> bool:
        """Wait until LISTEN first took effect (at most `timeout` seconds)."""
        return self._began.wait(timeout)

    def barrier(self, sent: float) -> None:
        """A barrier sent at `sent` was answered, and the notifications before its answer heard."""
        self._span = (self._span[0], sent)

    def deaf(self) -> None:
        """The connection is lost: what comes now is not heard."""
        self._span = self._NOTHING

    def until(self, since: float) -> float:
        """For a run whose latest answer was asked for at `since`: the time
        before which every cancel committed since has been heard, or -inf."""
        listening_since, barrier = self._span
        return barrier if since >= listening_since else float("-inf")


class JournalWriter(Protocol):
    def submit(
        self, steps: list[StepRecord], finishes: list[Finish],
        probes: list[tuple[str, int]] | None = None,
    ) -> Future[Checkpoint]: ...


class Runtime(Protocol):
    """What steps need from the worker beyond the journal: database calls
    that park a run, and the app's registry and sending."""

    def register_wait(
        self, state: RunState, key: str, position: int, wait: WaitSpec
    ) -> tuple[str, dict[str, Any] | None]: ...

    def resolve(self, function: object) -> tuple[str, int]:
        """A registered function's id and retry budget, from its id or handler."""
        ...

    def invoke(
        self, state: RunState, key: str, position: int, function_id: str, retries: int,
        data_json: str, expires: datetime | None,
    ) -> str:
        """Start a child run and park: 'started', 'lost' or 'cancelled'."""
        ...

    def send(self, events: list[Event]) -> list[str]: ...

    @property
    def hearing(self) -> Hearing:
        """The cancels this process has heard of (NOTIFY)."""
        ...

    def transaction(
        self, state: RunState, body: Callable[[psycopg.Connection[Any]], StepRecord]
    ) -> Checkpoint:
        """Call `body(conn)` in a transaction and write the journal entry it
        returns in the same one."""
        ...

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled connection in a transaction that commits when the block exits."""
        ...

    @property
    def rls(self) -> Rls: ...


def _checked_id(step_id: object) -> str:
    """A step id as the journal can hold it; a bad one fails the step's run."""
    if not isinstance(step_id, str) or not step_id:
        raise TypeError(f"step id must be a non-empty str, not {step_id!r}")
    if len(step_id) > MAX_STEP_ID_LENGTH:
        raise NonRetriableError(f"step id {step_id[:40]!r}... is longer than "
                                f"{MAX_STEP_ID_LENGTH} characters")
    if "\x00" in step_id or (not step_id.isprintable() and not _encodable(step_id)):
        raise NonRetriableError(f"step id {step_id!r} holds a NUL or an unpaired surrogate, "
                                "which Postgres cannot store")
    return step_id


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def given(entry: dict[str, Any]) -> dict[str, Any] | None:
    """`entry` if it holds a value given in place of its step (a journal
    entry of no attempt: `testing.execute`'s `steps=`), else None."""
    return entry if entry["attempts"] == 0 else None


class RunState:
    """What one execution of a run knows: journal, step numbering, checkpoints."""

    def __init__(
        self, claimed: ClaimedRow, writer: JournalWriter, prober: JournalWriter, runtime: Runtime, *,
        max_output_bytes: int, backoff: Backoff, lease: timedelta,
        finish_timeout: timedelta | None = None,
    ) -> None:
        self.claimed = claimed
        self.finish_timeout = finish_timeout
        self.deadline = None if finish_timeout is None else claimed.started_at + finish_timeout
        self.writer = writer
        self.prober = prober
        self.runtime = runtime
        self.max_output_bytes = max_output_bytes
        self.backoff = backoff
        self.attempt = claimed.handler_attempts
        self.cancel_requested = claimed.cancel_requested
        # Another worker holds it now (this one was cut off past its lease):
        # it stops at its next step and writes nothing more.
        self.lost = False
        # Until when (monotonic) its lease surely holds: from the claim, then
        # from each heartbeat that extended it. Past that, a step boundary asks.
        self.lease_until = claimed.clock.sent + lease.total_seconds()
        self.clock: DbTime = claimed.clock  # the latest answer from the database
        self.finished = False  # its outcome is submitted to the journal
        self._seen: Counter[str] = Counter()
        self._positions: dict[str, int] = {}  # key -> order in which its step began
        self._replayed_up_to: tuple[int, str] = (0, "")  # the furthest journaled step reached
        self._pending: Future[Checkpoint] | None = None
        self._lock = threading.Lock()  # parallel branches number and checkpoint steps

    def key_for(self, step_id: object) -> str:
        """The journal key of a step id: repeats are numbered in order, `id:1`, `id:2`..."""
        name = _checked_id(step_id)
        claim_step_id(name)
        with self._lock:
            key = self._next_key(name)
            self._seen[name] += 1
            self._positions[key] = len(self._positions) + 1
        return key

    def peek_key(self, step_id: object) -> str:
        """The key the next step called `step_id` will get."""
        return self._next_key(_checked_id(step_id))

    def _next_key(self, name: str) -> str:
        count = self._seen[name]
        return name if count == 0 else f"{name}:{count}"

    def position(self, key: str) -> int:
        return self._positions[key]

    def replayed(self, key: str) -> dict[str, Any] | None:
        """The step's journal entry, if any, once its order is checked. An
        entry of no attempt holds a value given in place of the step
        (`testing.execute`), wherever the step comes: it has no order."""
        entry = self.claimed.journal.get(key)
        if entry is not None and "position" in entry and given(entry) is None:
            self._check_order(key, int(entry["position"]))
        return entry

    def _check_order(self, key: str, position: int) -> None:
        """Journaled steps must be reached in the order they were journaled in
        (new steps may come between them). Parallel branches interleave in any
        order, so within them only the furthest position is kept."""
        with self._lock:
            last_position, last_key = self._replayed_up_to
            if position >= last_position:
                self._replayed_up_to = (position, key)
            elif not in_branch():
                raise StepOrderError(
                    f"step {key!r} is reached after step {last_key!r} but was journaled before "
                    "it: the function's steps changed order since this run started. Let runs "
                    "in flight finish (or cancel them) before reordering steps, or give the "
                    "moved steps new ids")

    def prior_failures(self, entry: dict[str, Any] | None) -> int:
        return 0 if entry is None else int(entry["attempts"])

    def now(self) -> datetime:
        """The database's clock, at the earliest, as the latest answer from it
        extrapolates it: every time of a run (step starts, sleeps, timeouts,
        retries, deadlines) is on the clock that SQL compares it with."""
        return self.clock.now()

    def after(self, delay: timedelta) -> datetime:
        """`delay` from now on the database's clock, never early."""
        return self.clock.latest() + delay

    def boundary(self, failures: int, *, ask: bool = True) -> Future[Checkpoint] | None:
        """Before a step executes: what to wait for first. That is the run's
        pending checkpoint (no step runs before the steps it follows are
        durable), which also answers whether the run was asked to cancel: a
        cancel that comes while the checkpoint is being written waits for
        its commit (flush locks the run's row). With `ask`, when there is
        none in flight, the latest answer (a checkpoint, the claim, or the
        worker's NOTIFY barrier) must be at most FRESH old, else the question
        is asked again (a probe: batched with other runs' probes, and
        read-only, so no flush to wait for). A cancel that returned before
        this boundary thus stops the step after it."""
        self.attempt = failures
        self.check_cancelled()
        with self._lock:
            pending = self._pending
        if pending is not None and pending.done():
            self.learn(pending.result())
            self.check_cancelled()
            pending = None
        if pending is not None or not ask:
            return pending
        now = time.monotonic()
        if now - max(self.clock.sent, self.runtime.hearing.until(self.clock.sent)) <= FRESH \
                and now < self.lease_until:  # else it may have been taken over meanwhile
            return None
        return self.prober.submit([], [], [(self.claimed.id, self.claimed.token)])

    def fresh(self) -> None:
        """Right before a step's code runs: `boundary` again, waiting for its
        probe if the latest answer is no longer fresh. The wait keeps the
        thread's turn: taken back after it, the answer could be stale again."""
        if (probe := self.boundary(self.attempt)) is not None:
            self.after_wait(probe.result())

    def check_cancelled(self) -> None:
        """Raise Cancelled if the run was asked to stop or is past its
        deadline; Park (leave it, write nothing) if it was lost."""
        if self.lost:
            raise Park()
        if self.cancel_requested:
            raise Cancelled()
        if self.deadline is not None and self.now() >= self.deadline:
            assert self.finish_timeout is not None
            raise Cancelled.timeout("finish", self.finish_timeout)

    def bounded(self, expires: datetime | None) -> datetime | None:
        """A park's wake-up time, no later than the run's deadline: a run
        parked past it is woken then, to be cancelled."""
        if self.deadline is None:
            return expires
        return self.deadline if expires is None else min(expires, self.deadline)

    def wait(self, pending: Future[Checkpoint]) -> None:
        """Wait for the run's pending checkpoint, lending this thread's turn
        meanwhile (see _turns), then take in its answer."""
        with lent_turn():
            checkpoint = pending.result()
        self.after_wait(checkpoint)

    def after_wait(self, checkpoint: Checkpoint) -> None:
        self.learn(checkpoint)
        self.check_cancelled()

    def learn(self, checkpoint: Checkpoint) -> None:
        """Take in a journal write's answer: a cancel request, the clock."""
        if self.claimed.id in checkpoint.cancelled:
            self.cancel_requested = True
        if self.claimed.id in checkpoint.lost:
            self.lost = True
        if checkpoint.clock.received > self.clock.received:
            self.clock = checkpoint.clock

    def completed(self, key: str, value: Any, started: datetime) -> StepRecord:
        """A step's journal entry for `value`; SerializationError if it has none."""
        text = serde.dumps(value, what=f"output of step {key!r}", limit=self.max_output_bytes)
        return StepRecord(self.claimed.id, self.claimed.token, key, self.position(key),
                          "completed", text, None, self.attempt + 1, started)

    def succeeded(self, key: str, fn: Callable[..., Any], value: Any, started: datetime) -> Any:
        """Journal a step's value; return it as replay will (through the serializer)."""
        record = self.completed(key, value, started)
        self.checkpoint(record)
        return replayed_value(fn, record)

    def failed(self, key: str, exc: BaseException, started: datetime) -> BaseException:
        """Journal a step's failure; return what to raise in the handler."""
        failures = self.attempt + 1
        final = gives_up(exc, failures, self.claimed.retries)
        record = StepRecord(
            self.claimed.id, self.claimed.token, key, self.position(key),
            "failed" if final else "retrying", None, error_json(exc), failures, started,
        )
        if not final:
            return Suspend([record], retry_time(exc, failures, self.backoff, self.after))
        self.checkpoint(record)
        return StepError(key, type(exc).__name__, str(exc))

    def checkpoint(self, record: StepRecord) -> None:
        """Hand a final entry to the writer; the next step waits until it is durable.

        Batches commit in order, so the latest one covers every branch's entries.
        """
        with self._lock:
            self._pending = self.writer.submit([record], [])


def replayed_value(fn: Callable[..., Any], record: StepRecord) -> Any:
    """A journaled value as replay returns it (through the serializer)."""
    return serde.revive(fn, serde.loads(record.output_json or "null"))
