"""``agent-factory bench processors``: events/s each stream processor sustains on one worker.

The workload is real finished events (as workers publish them: measured and
unmeasured runs, model tokens, 24 agents over 6 tenants), published to
``AF_EVENTS`` before the processor starts; the server fills ``af-executions``
from them. A processor is timed from ready (its tables recovered) until it has
applied every event. The raw ceiling is the streams suite's: one nats-py
client pulling and acking the same number of messages, same server, same run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from nats.js import JetStreamContext

from benchmarks.harness import RAW_CLIENTS, wait_until
from benchmarks.streams import ceiling as raw_ceiling
from benchmarks.streams import faust_worker
from mesh import names
from mesh.envelope import utcnow
from mesh.provision import provision
from mesh.queue.outcome import success_message
from mesh.queue.producer import TaskSpec, build_task
from mesh.wire.connection import connect, jetstream
from mesh.wire.protocol import parse_headers
from streams.processors.app import ProcessorConfig, build, prepare

__all__ = ["bench_metering", "bench_processors", "finished_workload", "publish_events", "publish_workload"]

AGENTS = [f"bench-agent-{i}" for i in range(24)]
TENANTS = [f"tenant-{i}" for i in range(6)]


def finished_workload(n: int, failing_every: int = 0) -> list[tuple[str, bytes, dict[str, str]]]:
    """``n`` finished events (subject, data, headers), as a worker writes them."""
    out = []
    tag = uuid.uuid4().hex[:6]
    for i in range(n):
        agent, tenant = AGENTS[i % len(AGENTS)], TENANTS[i % len(TENANTS)]
        task = build_task(TaskSpec(agent, {"i": i}, tenant=tenant), f"b{tag}{i:07d}")
        now = utcnow()
        audit = {"cpu_ms": 2.0 + i % 7, "peak_rss_bytes": 30_000_000} if i % 2 else None
        usage = [{"model": "small-model", "input_tokens": 200, "output_tokens": 40}] if i % 5 == 0 else None
        subject, data, headers = success_message(
            task, agent, 1, now, now, {"ok": i}, None, audit, "1.0.0", usage
        )
        out.append((subject, data, parse_headers(headers)))
    return out


async def publish_events(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """Publish ``items`` (subject, data, headers), 2,000 acks in flight at most."""
    pending = []
    for subject, data, headers in items:
        pending.append(await js.publish_async(subject, data, headers=headers))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def publish_workload(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """Publish ``items`` to ``AF_EVENTS`` and wait until ``AF_EXECUTIONS`` holds them all."""
    before = (await js.stream_info(names.STREAM_EXECUTIONS)).state.messages
    await publish_events(js, items)

    async def copied() -> bool:
        return (await js.stream_info(names.STREAM_EXECUTIONS)).state.messages >= before + len(items)

    await wait_until(copied, 120, "the events copied into AF_EXECUTIONS")


async def timed(name: str, nats_url: str, done: Callable[[faust.App], Awaitable[bool] | bool]) -> float:
    """Seconds processor ``name`` takes from ready until ``done(app)``."""
    partitions = await prepare(nats_url, name=name)
    config = ProcessorConfig(nats_url, partitions, session_timeout_s=4, heartbeat_s=0.5)
    app = build(name, config)
    async with faust_worker(app):
        await wait_until(cast(Any, app.tables).recovery.completed.is_set, 120, f"{name} ready")
        start = time.perf_counter()
        await wait_until(lambda: done(app), 900, f"{name} done")
        return time.perf_counter() - start


async def bench_metering(nats_url: str, events: int) -> dict[str, float]:
    def counted(app: faust.App) -> bool:
        table = cast(Any, app.tables["metering-usage"])
        return bool(sum(v["n"] for v in table.data.values() if v) >= events)

    elapsed = await timed("metering", nats_url, counted)
    return {
        "metering_events_per_s": round(events / elapsed, 1),
        "metering_us_per_event": round(elapsed / events * 1e6, 1),
    }


async def bench_processors(nats_url: str, events: int = 50_000) -> dict[str, float]:
    """Each processor in turn over the same ``events`` finished executions (fresh groups)."""
    logging.getLogger("faust").setLevel(logging.ERROR)
    ceilings = {client: await raw_ceiling(nats_url, events, client) for client in RAW_CLIENTS}
    ceiling = max(ceilings.values())
    nc = await connect(nats_url, name="bench-processors")
    try:
        js = await jetstream(nc)
        await provision(js)
        await publish_workload(js, finished_workload(events))
    finally:
        await nc.drain()
    result: dict[str, float] = {"events": float(events), "ceiling_per_s": round(ceiling, 1)}
    result |= await bench_metering(nats_url, events)
    for key in [k for k in result if k.endswith("_events_per_s")]:
        result[key.replace("_events_per_s", "_ratio")] = round(result[key] / ceiling, 3)
    return result
