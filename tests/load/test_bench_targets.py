"""The benchmarks as tests of their targets: slow, so ``make bench`` runs them, not CI.

Each suite starts its own servers, measures raw nats-py in the same run,
prints its JSON (``pytest -s``) and fails on any target it misses.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.suites import run_benchmarks
from benchmarks.targets import TARGETS, missed
from gateway.runtime import tune_gc


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("suite", list(TARGETS))
async def test_the_suite_meets_its_targets(suite: str) -> None:
    tune_gc()  # as `agent-factory bench` does; the raw ceiling runs under it too
    result = await run_benchmarks(suite)
    print(f"\n{suite}: {json.dumps(result)}")
    assert missed(suite, result) == []
