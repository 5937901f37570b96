"""The chaos experiment of bench/chaos.py, short: 300 orders on 4 worker
processes through 30 s of faults (a worker SIGKILLed every 2 s, two
Postgres crashes, backends terminated every second, a worker cut off from
Postgres for 25 s), then every promise checked by SQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import load_bench

from pgdurable.embedded import _system_bindir


def test_promises_hold_through_crashes_restarts_terminations_and_a_partition() -> None:
    if _system_bindir() is None:
        pytest.skip("needs the system's PostgreSQL binaries (initdb, pg_ctl)")
    chaos = load_bench("chaos")
    config = chaos.Config(runs=300, workers=4, threads=4, faults=30.0, cut=25.0, seed=7,
                          settle_bound=60.0)
    folder = Path(tempfile.mkdtemp(prefix="pgdurable-chaos-"))
    try:
        report = chaos.run_chaos(config, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert report.problems(config) == [], report.summary()
    assert report.completed == config.runs
    assert report.kills >= 10 and report.restarts == 2 and report.terminated >= 10
    if chaos.Partition.available():  # as root: the cut is real, and its runs were taken over
        assert report.cut_seconds >= config.cut
        assert report.held_when_cut and report.taken_over == len(report.held_when_cut)
    else:
        assert os.geteuid() != 0
