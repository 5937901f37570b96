"""What a worker's LISTEN connection vouches for (Hearing): cancels committed
from LISTEN to its latest barrier, and none committed before it listened."""

from __future__ import annotations

import time

from pgdurable._replay import Hearing

NEVER = float("-inf")


def test_nothing_is_heard_before_listening_or_after_the_connection_is_lost() -> None:
    hearing = Hearing()
    assert hearing.until(time.monotonic()) == NEVER
    hearing.listening()
    hearing.barrier(time.monotonic())
    hearing.deaf()
    assert hearing.until(time.monotonic()) == NEVER


def test_a_barrier_vouches_only_for_runs_answered_after_listen_took_effect() -> None:
    answered_before = time.monotonic()  # e.g. a claim sent before the listener began
    hearing = Hearing()
    hearing.listening()
    answered_after = time.monotonic()
    sent = time.monotonic()
    hearing.barrier(sent)
    assert hearing.until(answered_after) == sent
    assert hearing.until(answered_before) == NEVER, \
        "a cancel committed between that answer and LISTEN was never heard"


def test_a_new_connection_does_not_vouch_for_what_was_missed_while_away() -> None:
    hearing = Hearing()
    hearing.listening()
    answered = time.monotonic()
    hearing.barrier(time.monotonic())
    hearing.deaf()
    hearing.listening()  # reconnected: what was committed while away is lost
    hearing.barrier(time.monotonic())
    assert hearing.until(answered) == NEVER
