"""The resolver benchmark: 100 agents in layers, diamonds everywhere, some newest versions
unusable (the resolver steps back), resolved in under 100 ms (median of 20)."""

from __future__ import annotations

import json

from benchmarks.resolver import bench_resolver


def test_bench_resolver_100_agents_under_100_ms() -> None:
    result = bench_resolver(agents=100, rounds=20)
    print(f"\nresolver: {json.dumps(result)}")
    assert result["resolver_agents"] == 100
    assert result["resolver_median_ms"] < 100
