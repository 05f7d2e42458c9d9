"""``agent-factory bench sandbox --json`` runs the suite and prints its JSON (a tiny count here)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import cli


def test_bench_sandbox_prints_the_fields_the_issue_names() -> None:
    result = CliRunner().invoke(cli, ["bench", "sandbox", "-n", "20", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for field in ("invocations_per_s", "overhead_p50_ms", "overhead_p99_ms", "template_rss_mb"):
        assert isinstance(data[field], int | float) and data[field] > 0, (field, data)
    assert data["levels"]["rlimits"] is True
