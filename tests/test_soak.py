"""The memory soak of bench/soak.py, short: a worker process holding 1,000
runs sleeping and then 1,000 async runs executing at once, then 30 s of
W1-like load; its RSS read from /proc."""

from __future__ import annotations

from types import ModuleType

import pytest
from conftest import BENCH, load_bench


def _soak(monkeypatch: pytest.MonkeyPatch, dsn: str) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # soak.py imports bench/common.py
    import common  # type: ignore[import-not-found]

    monkeypatch.setattr(common, "DSN", dsn)  # the suite's server, not the bench's
    return load_bench("soak")


def test_held_runs_cost_little_and_memory_stays_flat_under_load(
    monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    report = _soak(monkeypatch, dsn).measure(held=1000, minutes=0.5, rate=300, sample_every=2.0,
                                             hold=5.0, say=lambda line: None)
    assert report.sleeping - report.idle < 5, "1,000 sleeping runs are rows, not worker memory"
    assert report.executing > report.sleeping  # the async runs were held, each with its task
    first, last = report.fifths(warm=0.1)
    assert last <= first * 1.10, report.samples
    assert report.sent >= 0.9 * 0.5 * 60 * 300
    assert max(depth for _, _, depth in report.samples) < 3 * 300, "the worker fell behind"
