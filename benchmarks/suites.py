"""The suites and their runner: ``agent-factory bench`` and ``make bench`` (``tests/load``) call
:func:`run_benchmarks`.

Each suite starts its own servers (:func:`benchmarks.harness.servers`, or
:func:`benchmarks.harness.nats_nodes` for those that also run on a cluster)
and measures the raw nats-py ceiling in the same run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agents.examples.noop import NoOp
from agents.sandbox import Sandbox
from agents.sandboxed import sandbox_config
from benchmarks.api import bench_api
from benchmarks.config_reload import bench_config
from benchmarks.fsync import bench_fsync
from benchmarks.harness import nats_nodes, say, servers
from benchmarks.hub import bench_hub
from benchmarks.messaging import bench_messaging
from benchmarks.processor_breaker import bench_breaker
from benchmarks.processor_canary import bench_canary
from benchmarks.processors import bench_processors
from benchmarks.queue import bench_queue
from benchmarks.sandbox import bench_sandbox
from benchmarks.scaling import bench_scaling
from benchmarks.skeleton import bench_skeleton
from benchmarks.streams import bench_streams
from benchmarks.targets import TARGETS
from benchmarks.tracing import traced
from benchmarks.two_processes import bench_two_processes

__all__ = ["CLUSTER_SUITES", "SUITES", "BenchOptions", "run_benchmarks"]


@dataclass(frozen=True)
class BenchOptions:
    """What a run of the suites may be given; each suite reads what applies to it."""

    count: int | None = None  # runs, tasks or events to push through (each suite has its default)
    cluster: int = 1  # nats-server nodes; on more than one, every stream has one replica per node
    rounds: int = 3  # rounds per side of a throughput comparison
    workers: tuple[int, ...] = (1, 2, 4)  # the worker processes the scaling suite compares
    latency_s: float = 5.0  # how long the queue's latency runs at 1,000 tasks/s
    sandbox: bool = False  # queue: each of our tasks runs the noop agent in a confined child
    quota: int | None = None  # queue: our agent under a fleet-wide concurrency quota of this many
    trace_ratio: float | None = None  # queue: this process traces, sampling this share (benchmarks.tracing)


async def _skeleton(opts: BenchOptions) -> dict[str, Any]:
    say("bench skeleton: no-op runs through API → queue → worker → event → PostgreSQL …")
    async with servers(postgres=True) as env:
        return await bench_skeleton(env, opts.count or 2000)


async def _queue(opts: BenchOptions) -> dict[str, Any]:
    say(
        f"bench queue on {opts.cluster} node(s): raw ceilings and ours in one process, then in two; "
        "latency at 1,000 tasks/s …"
    )
    n = opts.count or 20_000
    async with nats_nodes(opts.cluster) as nodes:
        if opts.sandbox:  # one process only: the sandbox's cost on the queue's own path
            async with Sandbox(sandbox_config([NoOp()])) as sandbox:
                return await bench_queue(nodes, n, opts.rounds, opts.latency_s, sandbox)
        if opts.quota:  # one process only: the slots' cost on the queue's own path
            return await bench_queue(nodes, n, opts.rounds, opts.latency_s, quota=opts.quota)
        if opts.trace_ratio is not None:  # one process only: tracing's cost on the queue's own path
            with traced(opts.trace_ratio) as exporter:
                result = await bench_queue(nodes, n, opts.rounds, opts.latency_s)
            result["tracing"] = {"sample_ratio": opts.trace_ratio, "exporter": "otlp-http (collector stub)",
                                 "spans_exported": exporter.spans}  # fmt: skip
            return result
        result = await bench_queue(nodes, n, opts.rounds, opts.latency_s)
        result["two_processes"] = await bench_two_processes(nodes, n, opts.rounds)
    return result


async def _fsync(opts: BenchOptions) -> dict[str, Any]:
    return await bench_fsync(opts.cluster, opts.count or 20_000, opts.rounds, opts.latency_s)


async def _scaling(opts: BenchOptions) -> dict[str, Any]:
    workers = ", ".join(map(str, opts.workers))
    say(f"bench scaling on {opts.cluster} node(s): {workers} worker processes draining, raw and ours …")
    async with nats_nodes(opts.cluster) as nodes:
        return await bench_scaling(nodes, opts.count or 20_000, opts.workers, opts.rounds)


async def _messaging(opts: BenchOptions) -> dict[str, Any]:
    say("bench messaging …")
    async with servers() as env:
        return await bench_messaging(env.nats.url)


async def _streams(opts: BenchOptions) -> dict[str, Any]:
    say("bench streams …")
    async with servers() as env:
        return await bench_streams(env.nats.url, **({"events": opts.count} if opts.count else {}))


async def _processors(opts: BenchOptions) -> dict[str, Any]:
    """Each processor on a server of its own (each reads everything its server holds)."""
    n = {"events": opts.count} if opts.count else {}
    say("bench processors: metering (and the raw ceiling) …")
    async with servers() as env:
        result = await bench_processors(env.nats.url, **n)
    say("bench processors: breaker (events/s, and reaction over repeated trips) …")
    async with servers() as env:
        result |= await bench_breaker(env.nats.url, **n)
    say("bench processors: canary …")
    async with servers() as env:
        result |= {k: v for k, v in (await bench_canary(env.nats.url, **n)).items() if k != "events"}
    for name in ("breaker", "canary"):
        result[f"{name}_ratio"] = round(result[f"{name}_events_per_s"] / result["ceiling_per_s"], 3)
    return result


async def _sandbox(opts: BenchOptions) -> dict[str, Any]:
    return await bench_sandbox(opts.count or 2000, opts.rounds)


async def _api(opts: BenchOptions) -> dict[str, Any]:
    async with servers(postgres=True) as env:
        return await bench_api(env)


async def _config(opts: BenchOptions) -> dict[str, Any]:
    async with servers() as env:
        return await bench_config(env.nats.url, opts.count or 200)


async def _hub(opts: BenchOptions) -> dict[str, Any]:
    async with servers(postgres=True) as env:
        return await bench_hub(env, opts.rounds, opts.count or 500)


SUITES: dict[str, Callable[[BenchOptions], Awaitable[dict[str, Any]]]] = {
    "skeleton": _skeleton,
    "queue": _queue,
    "messaging": _messaging,
    "streams": _streams,
    "fsync": _fsync,
    "scaling": _scaling,
    "sandbox": _sandbox,
    "processors": _processors,
    "api": _api,
    "config": _config,
    "hub": _hub,
}

#: The suites that run on a cluster when asked (``--cluster N``); the others run on one server.
CLUSTER_SUITES = ("queue", "fsync", "scaling")


async def run_benchmarks(suite: str, options: BenchOptions | None = None) -> dict[str, Any]:
    """One suite's JSON, or with ``all`` the JSON of every suite that has
    targets (what ``make bench`` checks) under its name."""
    opts = options or BenchOptions()
    if opts.cluster > 1 and suite not in CLUSTER_SUITES:
        raise ValueError(f"{suite!r} runs on one server; --cluster applies to {', '.join(CLUSTER_SUITES)}")
    if suite != "all":
        return await SUITES[suite](opts)
    return {name: await SUITES[name](opts) for name in TARGETS}
