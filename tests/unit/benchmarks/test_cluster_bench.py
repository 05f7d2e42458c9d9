"""The cluster, fsync and scaling benches' own logic: what they report and how the CLI asks for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.fsync import fsync_cost
from benchmarks.harness import Nodes, server_cpu_s
from benchmarks.scaling import speedups
from benchmarks.suites import CLUSTER_SUITES, BenchOptions, run_benchmarks
from gateway.cli import cli
from mesh.embedded import NatsServer


def test_a_clusters_nodes_are_one_comma_separated_url_and_one_replica_each(tmp_path: Path) -> None:
    servers = [NatsServer(tmp_path / f"n{i}", port=4300 + i, sync_interval="always") for i in range(3)]
    nodes = Nodes(servers)
    assert nodes.url == "nats://127.0.0.1:4300,nats://127.0.0.1:4301,nats://127.0.0.1:4302"
    assert nodes.replicas == 3
    assert nodes.sync_interval == "always"
    assert nodes.pids == [None, None, None]  # not started


def test_server_cpu_is_unknown_when_any_node_has_no_process() -> None:
    assert server_cpu_s([None]) is None
    assert server_cpu_s([]) == 0.0


def test_speedup_is_each_worker_counts_rate_over_the_smallest_counts() -> None:
    assert speedups({4: 9000.0, 1: 3000.0, 2: 5400.0}) == {"1": 1.0, "2": 1.8, "4": 3.0}


def test_fsync_cost_is_the_throughput_kept_and_the_p99_added() -> None:
    default = {"tasks_per_s": 5000.0, "ceiling_per_s": 10000.0, "p99_ms": 3.0}
    always = {"tasks_per_s": 2000.0, "ceiling_per_s": 2500.0, "p99_ms": 7.5}
    assert fsync_cost(default, always) == {
        "tasks_per_s_kept": 0.4,
        "ceiling_per_s_kept": 0.25,
        "p99_ms_added": 4.5,
    }


async def test_a_suite_that_runs_on_one_server_refuses_a_cluster() -> None:
    with pytest.raises(ValueError, match="--cluster applies to queue, fsync, scaling"):
        await run_benchmarks("messaging", BenchOptions(cluster=3))


def _bench(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[tuple[str, BenchOptions]]]:
    """Run ``agent-factory … bench …`` with the suites replaced by a recorder."""
    calls: list[tuple[str, BenchOptions]] = []

    async def fake(suite: str, options: BenchOptions) -> dict[str, Any]:
        calls.append((suite, options))
        return {"tasks_per_s": 1.0, "replicas": options.cluster}

    monkeypatch.setattr("benchmarks.suites.run_benchmarks", fake)
    return CliRunner().invoke(cli, args), calls


def test_bench_prints_json_with_or_without_the_json_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    for args in (["bench", "queue"], ["bench", "queue", "--json"], ["-o", "json", "bench", "queue"]):
        result, _ = _bench(args, monkeypatch)
        assert json.loads(result.output) == {"tasks_per_s": 1.0, "replicas": 1}, args


def test_bench_passes_cluster_rounds_and_worker_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["bench", "scaling", "--cluster", "3", "--rounds", "2", "--workers", "1,2,8", "-n", "500"]
    result, calls = _bench(args, monkeypatch)
    assert result.exit_code == 0, result.output
    assert calls == [("scaling", BenchOptions(count=500, cluster=3, rounds=2, workers=(1, 2, 8)))]


@pytest.mark.parametrize("workers", ["0,2", "one", "1,,2"])
def test_bench_refuses_worker_counts_that_are_not_positive_numbers(
    workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, calls = _bench(["bench", "scaling", "--workers", workers], monkeypatch)
    assert result.exit_code == 2 and calls == []
    assert "comma-separated list of worker counts" in result.output


def test_bench_refuses_a_cluster_for_a_suite_that_runs_on_one_server(monkeypatch: pytest.MonkeyPatch) -> None:
    result, calls = _bench(["bench", "streams", "--cluster", "3"], monkeypatch)
    assert result.exit_code == 2 and calls == []
    assert f"--cluster applies to {', '.join(CLUSTER_SUITES)}" in result.output
