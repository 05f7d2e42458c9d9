"""The suites and their runner: ``agent-factory bench`` and ``make bench`` (``tests/load``) call
:func:`run_benchmarks`.

Each suite starts its own servers (:func:`benchmarks.harness.servers`) and
measures the raw nats-py ceiling in the same run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.harness import say, servers
from benchmarks.messaging import bench_messaging
from benchmarks.queue import bench_queue
from benchmarks.skeleton import bench_skeleton
from benchmarks.streams import bench_streams
from benchmarks.two_processes import bench_two_processes

__all__ = ["SUITES", "run_benchmarks"]


async def _skeleton(count: int | None) -> dict[str, Any]:
    say("bench skeleton: no-op runs through API → queue → worker → event → PostgreSQL …")
    async with servers(postgres=True) as env:
        return await bench_skeleton(env, count or 2000)


async def _queue(count: int | None, rounds: int = 3) -> dict[str, Any]:
    say("bench queue: raw ceilings and ours in one process, then in two; latency at 1,000 tasks/s …")
    n = count or 20_000
    async with servers() as env:
        result = await bench_queue(env.nats, n, rounds)
        result["two_processes"] = await bench_two_processes(env.nats.url, n, rounds, env.nats.pid)
    return result


async def _messaging(count: int | None) -> dict[str, Any]:
    say("bench messaging …")
    async with servers() as env:
        return await bench_messaging(env.nats.url)


async def _streams(count: int | None) -> dict[str, Any]:
    say("bench streams …")
    async with servers() as env:
        return await bench_streams(env.nats.url, **({"events": count} if count else {}))


SUITES: dict[str, Callable[[int | None], Awaitable[dict[str, Any]]]] = {
    "skeleton": _skeleton,
    "queue": _queue,
    "messaging": _messaging,
    "streams": _streams,
}


async def run_benchmarks(suite: str, count: int | None = None) -> dict[str, Any]:
    """One suite's JSON, or with ``all`` every suite's under its name.
    ``count``: runs, tasks or events to push through (each suite has its default)."""
    if suite != "all":
        return await SUITES[suite](count)
    return {name: await run(count) for name, run in SUITES.items()}
