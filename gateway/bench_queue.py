"""Queue benchmark: end-to-end no-op tasks/s and enqueue-to-start latency, vs raw nats-py.

* ``ceiling_per_s``: raw nats-py on a bare work-queue stream, same count, same
  server, same process: pipelined ``publish_async`` of N messages, then
  ``fetch(500)`` + ``ack()`` until all are consumed; N / total time.
* ``tasks_per_s``: N no-op tasks through ``enqueue`` → worker → handler →
  run state + ``execution.finished`` event → ``ack_sync``, enqueuer and worker
  running at once; N / time from first enqueue to last finished event.
* ``p50_ms`` / ``p99_ms``: enqueue call → handler start, with tasks offered at
  a fixed 1,000 tasks/s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.js.api import RetentionPolicy, StreamConfig

from gateway.bench import _servers, percentile
from mesh.connection import connect, jetstream
from mesh.provision import provision
from mesh.queue import TaskQueue, TaskSpec
from mesh.worker import AgentQueueConfig, TaskContext, TaskWorker

__all__ = ["bench_queue"]


async def _raw_ceiling(url: str, n: int, size: int = 256) -> float:
    nc = await connect(url, name="bench-raw")
    js = await jetstream(nc)
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], retention=RetentionPolicy.WORK_QUEUE))
    body = b"x" * size
    start = time.perf_counter()
    window = 1000
    for i in range(0, n, window):
        futs = [await js.publish_async("raw.q", body) for _ in range(min(window, n - i))]
        await asyncio.gather(*futs)
    sub = await js.pull_subscribe("raw.q", durable="raw", stream="RAW")
    got = 0
    while got < n:
        msgs = await sub.fetch(500, timeout=5)
        for m in msgs:
            await m.ack()
        got += len(msgs)
    await nc.flush()
    elapsed = time.perf_counter() - start
    await js.delete_stream("RAW")
    await nc.drain()
    return n / elapsed


async def _throughput(url: str, n: int) -> float:
    nc = await connect(url, name="bench-queue")
    js = await jetstream(nc)
    await provision(js)
    done = asyncio.Event()
    finished = 0

    async def on_finished(msg: Any) -> None:
        nonlocal finished
        finished += 1
        if finished == n:
            done.set()

    async def noop(ctx: TaskContext) -> Any:
        return None

    sub = await nc.subscribe("af.events.execution.finished.bench", cb=on_finished)
    worker = TaskWorker(nc, js, {"bench": (AgentQueueConfig("bench"), noop)}, concurrency=256)
    await worker.start()
    queue = TaskQueue(nc, js)
    await queue.start()
    start = time.perf_counter()
    window = 500
    for i in range(0, n, window):
        batch = min(window, n - i)
        await asyncio.gather(*(queue.enqueue(TaskSpec("bench", {"i": i + k})) for k in range(batch)))
    await asyncio.wait_for(done.wait(), 300)
    await queue.stop()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    await worker.stop(5)
    await nc.drain()
    return n / elapsed


async def _latency(url: str, rate: int = 1000, seconds: float = 5.0) -> list[float]:
    nc = await connect(url, name="bench-latency")
    js = await jetstream(nc)
    lat: list[float] = []
    total = int(rate * seconds)
    all_started = asyncio.Event()

    async def record(ctx: TaskContext) -> Any:
        lat.append((time.perf_counter() - ctx.input["t0"]) * 1000)
        if len(lat) == total:
            all_started.set()

    worker = TaskWorker(nc, js, {"lat": (AgentQueueConfig("lat"), record)}, concurrency=64)
    await worker.start()
    queue = TaskQueue(nc, js)
    await queue.start()
    loop = asyncio.get_running_loop()
    begin = loop.time()
    pending: set[asyncio.Task[Any]] = set()
    for i in range(total):
        target = begin + i / rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(queue.enqueue(TaskSpec("lat", {"t0": time.perf_counter()})))
        pending.add(t)
        t.add_done_callback(pending.discard)
    await asyncio.wait_for(all_started.wait(), 60)
    await queue.stop()
    await worker.stop(5)
    await nc.drain()
    return lat


async def bench_queue(n: int = 20_000) -> dict[str, Any]:
    async with _servers() as env:
        ceiling = await _raw_ceiling(env.nats.url, n)
        tasks = await _throughput(env.nats.url, n)
        lat = await _latency(env.nats.url)
    return {
        "tasks": n,
        "tasks_per_s": round(tasks, 1),
        "ceiling_per_s": round(ceiling, 1),
        "ratio": round(tasks / ceiling, 3),
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "latency_rate_per_s": 1000,
    }
