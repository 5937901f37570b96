"""Where a worker's next claim starts reading the due index.

A claim takes due runs oldest first, walking the queue's index from its
start. Claimed and finished runs leave dead entries there; vacuum and the
index's own clean-up remove them, unless a snapshot held open elsewhere (a
long transaction, a lagging replica's feedback) still sees them. Then every
claim walks all of them, one heap visit each, and gets slower the longer the
snapshot is held. Claims from a floor walk only what is due since.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from ._records import ClaimedRow

# A run sent or woken becomes due at its transaction's start, and visible to
# claims at its commit: sends commit well within this.
LATE_COMMIT = timedelta(seconds=1)
# A claim from the start at most once per this many times its own length, so
# that such claims take at most a tenth of a claimer's time however many
# dead entries they walk.
FULL_CLAIM_PACE = 10


class DueFloor:
    """The due time the next claim may start from, learned from the last.

    After a claim that took runs, every run it could see and left behind is
    due no earlier than the last run it took (it takes them in due order),
    and a run committed since is due no earlier than LATE_COMMIT before the
    claim. Runs the floor misses (a send in a transaction longer than that,
    a run handed a concurrency slot, which keeps its old due time) are found
    by a claim from the start, made whenever the pace allows: every claim
    when the index is clean, rarely when it is full of dead entries.
    """

    def __init__(self) -> None:
        self._from: datetime | None = None
        self._full_ended = float("-inf")
        self._full_took = 0.0

    def next(self) -> datetime | None:
        """Where the next claim starts; None: from the start."""
        if time.monotonic() - self._full_ended >= FULL_CLAIM_PACE * self._full_took:
            return None
        return self._from

    def claimed(self, due_from: datetime | None, rows: Sequence[ClaimedRow], began: float) -> None:
        """Learn from a claim that started at `due_from` and at `began`
        (monotonic) and took `rows`."""
        if due_from is None:
            self._full_ended = time.monotonic()
            self._full_took = self._full_ended - began
        if rows:
            claimed_at = rows[0].clock.at
            self._from = min(max(r.due_at for r in rows), claimed_at - LATE_COMMIT)
