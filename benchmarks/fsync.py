"""The cost of ``sync_interval: always``: the queue bench with nats-server
fsyncing every write against the same bench with its default (fsync every
2 minutes; acknowledged writes are in the OS page cache until then, see
docs/durability.md).

Each side runs on servers of its own, one after the other, with the same
replicas; each has its raw nats-py ceiling measured on its own servers, so
``cost`` shows what fsync takes from the raw client and from ours.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import nats_nodes, say
from benchmarks.queue import bench_queue

__all__ = ["SYNC_INTERVALS", "bench_fsync", "fsync_cost"]

SYNC_INTERVALS = ("default", "always")


def fsync_cost(default: dict[str, Any], always: dict[str, Any]) -> dict[str, float]:
    """What ``always`` keeps of ``default``'s throughput (ours and the ceiling),
    and what it adds to the p99 enqueue-to-start."""
    return {
        "tasks_per_s_kept": round(always["tasks_per_s"] / default["tasks_per_s"], 3),
        "ceiling_per_s_kept": round(always["ceiling_per_s"] / default["ceiling_per_s"], 3),
        "p99_ms_added": round(always["p99_ms"] - default["p99_ms"], 3),
    }


async def bench_fsync(size: int, n: int, rounds: int = 3, latency_s: float = 5.0) -> dict[str, Any]:
    """The queue bench on ``size`` node(s) with each sync interval, then the cost."""
    results: dict[str, dict[str, Any]] = {}
    for interval in SYNC_INTERVALS:
        say(f"bench fsync: sync_interval {interval} on {size} node(s) …")
        async with nats_nodes(size, interval) as nodes:
            results[interval] = await bench_queue(nodes, n, rounds, latency_s)
    return {**results, "cost": fsync_cost(results["default"], results["always"])}
