"""The breaker benchmark, small: it runs, each event is applied once (the bench checks the
windows' totals), and a trip reaches both workers well within the 1 s requirement."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.processor_breaker import bench_breaker
from mesh.embedded import NatsServer


async def test_bench_breaker_small(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        result = await bench_breaker(server.url, events=2_000, trips=3)
    finally:
        server.stop()
    print(f"\nbreaker: {json.dumps(result)}")
    assert result["breaker_events_per_s"] > 0 and result["faust_table_counter_per_s"] > 0
    assert result["breaker_reaction_p99_ms"] < 1000
