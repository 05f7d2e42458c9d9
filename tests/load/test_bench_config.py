"""The config benchmark, small: every change reaches each of 3 follower processes, well
within the 200 ms p99 issue 24 asks."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.config_reload import bench_config
from benchmarks.targets import missed
from mesh.embedded import NatsServer


async def test_bench_config_small(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        result = await bench_config(server.url, changes=50, workers=3)
    finally:
        server.stop()
    print(f"\nconfig: {json.dumps(result)}")
    assert result["missed"] == 0 and result["workers"] == 3
    assert missed("config", result) == []
