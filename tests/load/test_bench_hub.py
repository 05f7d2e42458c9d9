"""The hub benchmark: publish and download of 1 MB and 20 MB archives (checked against
their digest), and search over 1,000 indexed packages within issue 26's 20 ms p99."""

from __future__ import annotations

import json

from benchmarks.harness import servers
from benchmarks.hub import bench_hub
from benchmarks.targets import missed


async def test_bench_hub() -> None:
    async with servers(postgres=True) as env:
        result = await bench_hub(env, rounds=2, searches=300)
    print(f"\nhub: {json.dumps(result)}")
    assert result["1mb"]["download_mb_per_s"] > 0 and result["20mb"]["publish_mb_per_s"] > 0
    assert missed("hub", result) == []
