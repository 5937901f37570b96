"""Where a worker's claims start reading the due index (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgdurable import _floor
from pgdurable._floor import LATE_COMMIT, DueFloor
from pgdurable._records import ClaimedRow, DbTime

T = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(_floor.time, "monotonic", clock)
    return clock


def row(due: datetime, claimed_at: datetime = T) -> ClaimedRow:
    return ClaimedRow(id="r", token=1, function_id="f", attempt=0, handler_attempts=0, retries=3, traces=(),
                      cancel_requested=False, events=[], journal={}, first_start=True, due_at=due,
                      started_at=claimed_at, clock=DbTime(claimed_at, 0.0, 0.0))


def claim(floor: DueFloor, clock: Clock, took: float, rows: list[ClaimedRow]) -> None:
    due_from, began = floor.next(), clock.now
    clock.now += took
    floor.claimed(due_from, rows, began)


def test_the_first_claim_reads_from_the_start(clock: Clock) -> None:
    assert DueFloor().next() is None


def test_after_a_claim_the_floor_is_the_last_due_run_taken_or_the_margin(clock: Clock) -> None:
    floor = DueFloor()
    claim(floor, clock, 0.5, [row(T - timedelta(seconds=9)), row(T - timedelta(seconds=5))])
    assert floor.next() == T - timedelta(seconds=5)  # runs due before were all taken
    claim(floor, clock, 0.01, [row(T - timedelta(milliseconds=10))])
    assert floor.next() == T - LATE_COMMIT  # a send may commit that late


def test_an_empty_claim_leaves_the_floor(clock: Clock) -> None:
    floor = DueFloor()
    claim(floor, clock, 0.5, [row(T - timedelta(seconds=5))])
    claim(floor, clock, 0.01, [])
    assert floor.next() == T - timedelta(seconds=5)


def test_claims_from_the_start_come_back_at_their_pace(clock: Clock) -> None:
    floor = DueFloor()
    claim(floor, clock, 0.5, [row(T - timedelta(seconds=5))])  # a slow one: the index is bloated
    clock.now += 0.5 * _floor.FULL_CLAIM_PACE - 0.01
    assert floor.next() is not None
    clock.now += 0.02
    assert floor.next() is None
    claim(floor, clock, 0.0001, [])  # a quick one: the index is clean again
    clock.now += 0.001
    assert floor.next() is None
