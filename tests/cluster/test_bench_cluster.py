"""``agent-factory bench … --cluster 3`` end to end at a tiny count: the
commands work on a real 3-node cluster of their own (numbers: make bench and
docs/scaling.md, not CI)."""

from __future__ import annotations

import json
import traceback
from typing import Any

import pytest
from click.testing import CliRunner

from gateway.cli import cli


def _bench(*args: str) -> dict[str, Any]:
    tiny = ["--cluster", "3", "-n", "200", "--rounds", "1", "--json"]
    result = CliRunner().invoke(cli, ["bench", *args, *tiny])
    if result.exit_code != 0 and result.exc_info is not None:  # say where, not only BadRequestError()
        raise AssertionError(result.output + "".join(traceback.format_exception(*result.exc_info)))
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.mark.timeout(120)
def test_bench_queue_on_three_nodes_reports_r3_against_the_raw_ceiling_on_r3() -> None:
    result = _bench("queue")
    assert result["replicas"] == 3 and result["tasks"] == 200
    for side in (result, result["two_processes"]):
        assert side["tasks_per_s"] > 0 and side["ceiling_per_s"] > 0 and side["ratio"] > 0
    assert result["p99_ms"] >= result["p50_ms"] > 0


@pytest.mark.timeout(120)
def test_bench_scaling_on_three_nodes_reports_each_worker_count() -> None:
    result = _bench("scaling", "--workers", "1,2")
    assert result["replicas"] == 3 and result["enqueue_per_s"] > 0
    assert list(result["workers"]) == ["1", "2"] and result["speedup"]["1"] == 1.0
    assert all(r["tasks_per_s"] > 0 and r["ratio"] > 0 for r in result["workers"].values())
