"""``agent-factory bench queue --sandbox`` end to end at a tiny count: the queue's
own path with each task run by the noop agent in a confined child (numbers:
make bench and docs/sandbox.md, not CI)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import cli


def test_bench_queue_sandboxed_reports_the_sandbox_and_a_lower_latency_rate() -> None:
    result = CliRunner().invoke(cli, ["bench", "queue", "--sandbox", "-n", "100", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tasks"] == 100 and report["tasks_per_s"] > 0 and report["ratio"] > 0
    assert report["latency_rate_per_s"] == 50 and report["p99_ms"] >= report["p50_ms"] > 0
    assert report["sandbox"]["rlimits"] is True
    assert "two_processes" not in report  # the sandbox's cost on the one-process path only


def test_sandbox_is_refused_for_other_suites() -> None:
    result = CliRunner().invoke(cli, ["bench", "messaging", "--sandbox"])
    assert result.exit_code == 2 and "--sandbox applies to the queue suite" in result.output
    result = CliRunner().invoke(cli, ["bench", "scaling", "--quota", "16"])
    assert result.exit_code == 2 and "--quota applies to the queue suite" in result.output
