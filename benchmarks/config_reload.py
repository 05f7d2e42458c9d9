"""How fast a config change reaches every worker process: put → applied, per process.

The parent stores ``changes`` versions of one agent's config in ``af_config``
(:func:`~mesh.queue.agent_config.put_record`, as the gateway does after its
PostgreSQL commit), one every :data:`SPACING_S` (a change at a time, not a
burst), and notes the wall-clock time just before each put. Each of
``workers`` follower processes runs the
:class:`~mesh.queue.agent_config.ConfigWatch` a worker runs and, when its
``on_change`` has applied a version (parsed, in memory, the merged cache
cleared), publishes ``<worker> <version> <time>`` on core NATS; it also
reports when the raw message reached a plain subscription of its own (the
ceiling: nothing but the wire). Latency = applied time - put time (one host,
one clock).

Each follower is a ``python -m benchmarks.config_reload follower NAME URL N``
(:mod:`benchmarks.children`): ``ready`` once its watch has started; ``exit``
ends it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from nats.aio.msg import Msg

from benchmarks.children import children
from benchmarks.harness import percentile, say
from mesh import names
from mesh.provision import provision
from mesh.queue.agent_config import ConfigRecord, ConfigWatch, put_record
from mesh.wire.connection import connect, jetstream

__all__ = ["bench_config"]

AGENT = "bench-config"
APPLIED = "af.bench.config.applied"  # core NATS: "<worker> <version> <time>"
RAW = "af.bench.config.raw"
SPACING_S = 0.02


async def bench_config(url: str, changes: int = 200, workers: int = 3) -> dict[str, Any]:
    nc = await connect(url, name="bench-config")
    js = await jetstream(nc)
    await provision(js)
    applied: dict[tuple[str, int], float] = {}
    raw: dict[tuple[str, int], float] = {}

    def collect(into: dict[tuple[str, int], float]) -> Any:
        async def on_msg(msg: Msg) -> None:
            worker, version, at = msg.data.decode().split()
            into[(worker, int(version))] = float(at)

        return on_msg

    subs = [await nc.subscribe(APPLIED, cb=collect(applied)), await nc.subscribe(RAW, cb=collect(raw))]
    put_at: dict[int, float] = {}
    roles = [("follower", f"w{i}") for i in range(workers)]
    try:
        async with children("benchmarks.config_reload", url, changes, roles):
            say(f"bench config: {changes} changes to {workers} follower processes …")
            for version in range(1, changes + 1):
                record = ConfigRecord(agent=AGENT, version=version, config={"values": {"n": version}})
                put_at[version] = time.time()
                await put_record(js, record)
                await asyncio.sleep(SPACING_S)
            deadline = time.monotonic() + 10
            while len(applied) < changes * workers and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.drain()
    latencies = [(at - put_at[v]) * 1000 for (_, v), at in applied.items()]
    raw_latencies = [(at - put_at[v]) * 1000 for (_, v), at in raw.items()]
    return {
        "workers": workers,
        "changes": changes,
        "propagation_p50_ms": round(percentile(latencies, 50), 3),
        "propagation_p99_ms": round(percentile(latencies, 99), 3),
        "propagation_max_ms": round(max(latencies, default=float("nan")), 3),
        "missed": changes * workers - len(applied),
        "raw_p50_ms": round(percentile(raw_latencies, 50), 3),
        "raw_p99_ms": round(percentile(raw_latencies, 99), 3),
    }


async def _follower(name: str, url: str) -> None:
    nc = await connect(url, name=f"bench-config-{name}")
    js = await jetstream(nc)

    sending: set[asyncio.Task[None]] = set()

    def applied(key: str, record: ConfigRecord | None) -> None:
        if record is not None and record.agent == AGENT:
            watch.merged(AGENT, "default")  # what a run would read now
            report = f"{name} {record.version} {time.time()}".encode()
            task = asyncio.create_task(nc.publish(APPLIED, report))
            sending.add(task)
            task.add_done_callback(sending.discard)

    async def on_raw(msg: Msg) -> None:
        record = ConfigRecord.model_validate_json(msg.data)
        await nc.publish(RAW, f"{name} {record.version} {time.time()}".encode())

    watch = ConfigWatch(nc, js, on_change=applied, name=name)
    await watch.start()
    raw_sub = await nc.subscribe(names.kv_subject(names.BUCKET_CONFIG, names.config_key(AGENT)), cb=on_raw)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, _wait_for_exit)
    await raw_sub.unsubscribe()
    await watch.stop()
    await nc.drain()


def _wait_for_exit() -> None:
    for line in sys.stdin:
        if line.strip() == "exit":
            return


if __name__ == "__main__":
    asyncio.run(_follower(sys.argv[2], sys.argv[3]))
