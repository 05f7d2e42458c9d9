"""Queue benchmark: end-to-end no-op tasks/s and enqueue-to-start latency, vs raw nats-py.

On one nats-server, or on a cluster (``bench queue --cluster 3``) where every
stream, the raw one included, has one replica per node (``replicas``) and
every client is given every node's URL.

* ``ceiling_per_s``: raw nats-py on a bare work-queue stream, same count, same
  server(s), same replicas, same process: pipelined ``publish_async`` of N messages, then
  ``fetch(500)`` + ``ack()`` until all are consumed. Measured with both raw
  clients (:data:`benchmarks.harness.RAW_CLIENTS`: plain nats-py, and nats-py
  with our parser) as ``ceiling_plain_per_s`` / ``ceiling_lean_per_s``; the
  stronger is the ceiling.
* ``tasks_per_s``: N no-op tasks through ``enqueue`` → worker → handler →
  ``execution.finished`` event (projected into the run state by the server)
  → ``ack_sync``, enqueuer and worker running at once.
* Every throughput is N / the time from the first publish to the later of the
  last publish stored and the last ack nats-server applied
  (:func:`benchmarks.harness.last_ack_at`); no setup or stop is inside it.
* ``ratio``: ``tasks_per_s`` / ``ceiling_per_s``, each the best of three
  alternating rounds (every round is under ``rounds``).
* ``p50_ms`` / ``p99_ms``: enqueue call → handler start, with tasks offered at
  a fixed 1,000 tasks/s.
* ``cpu_us_per_task``: CPU time per task of this process (``python``) and
  of nats-server (``server``, from ``/proc``; null elsewhere) in the two
  rounds compared: where the time goes, on any machine.

The same comparison with producer and consumer in separate processes, the
production topology, is :mod:`benchmarks.two_processes` (reported under
``two_processes`` of this suite's JSON).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StreamConfig

from agents.examples.noop import NoOp
from agents.sandbox import Sandbox
from agents.sandboxed import sandboxed_handler
from benchmarks.harness import (
    RAW_CLIENTS,
    CpuClock,
    Nodes,
    RawClient,
    Round,
    compare,
    last_ack_at,
    percentile,
    raw_connect,
    raw_fetch,
)
from mesh import names
from mesh.envelope import Priority
from mesh.provision import ProvisionConfig, provision
from mesh.queue.budgets import Quota, put_limit
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream

__all__ = [
    "JS_ADMIN_TIMEOUT_S",
    "bench_queue",
    "enqueue_all",
    "provision_for",
    "publish_all",
    "raw_work_queue",
]

AGENT = "bench"
RAW_STREAM = "RAW"
_raw_rounds = itertools.count()  # names each raw round's stream
SANDBOXED_LATENCY_RATE = 50  # tasks/s offered for the latency with --sandbox
TASK_BYTES = 256  # the raw message's body; a no-op task's envelope is about as large
#: Creating a replicated stream waits on a Raft election: on a loaded machine more than 5 s.
JS_ADMIN_TIMEOUT_S = 20.0


def raw_work_queue(name: str, subject: str, replicas: int) -> StreamConfig:
    """The raw side's stream: a bare work queue, replicated as ours are."""
    return StreamConfig(
        name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE, num_replicas=replicas
    )


async def provision_for(nodes: Nodes) -> None:
    """The platform's streams and buckets, with one replica per node."""
    nc = await connect(nodes.url, name="bench-provision")
    await provision(await jetstream(nc, JS_ADMIN_TIMEOUT_S), ProvisionConfig(replicas=nodes.replicas))
    await nc.drain()


async def publish_all(js: JetStreamContext, subject: str, n: int, window: int = 1000) -> None:
    """The raw producer: ``n`` pipelined ``publish_async``, ``window`` PubAcks awaited at a time."""
    body = b"x" * TASK_BYTES
    for i in range(0, n, window):
        futures = [await js.publish_async(subject, body) for _ in range(min(window, n - i))]
        await asyncio.gather(*futures)


async def enqueue_all(queue: TaskQueue, agent: str, n: int, window: int = 500) -> None:
    """Our producer: ``n`` enqueues, ``window`` concurrent calls at a time."""
    for i in range(0, n, window):
        specs = [TaskSpec(agent, {"i": i + k}) for k in range(min(window, n - i))]
        await asyncio.gather(*(queue.enqueue(spec) for spec in specs))


async def _raw_round(nodes: Nodes, n: int, client: RawClient) -> Round:
    nc = await raw_connect(nodes.url, f"bench-raw-{client}", client)
    js = nc.jetstream(timeout=JS_ADMIN_TIMEOUT_S)
    # A stream of its own per round: a cluster's peers drop a deleted stream
    # after the delete is answered, so a name reused at once could meet the old one.
    k = next(_raw_rounds)
    stream, subject = f"{RAW_STREAM}_{k}", f"raw.{k}"
    await js.add_stream(raw_work_queue(stream, f"{subject}.>", nodes.replicas))
    clock = CpuClock(nodes.pids)
    clock.start()
    await publish_all(js, f"{subject}.q", n)
    published_at = time.time()
    sub = await js.pull_subscribe(f"{subject}.q", durable="raw", stream=stream)
    got = 0
    while got < n:
        msgs = await raw_fetch(sub, 500, timeout=5)
        for m in msgs:
            await m.ack()
        got += len(msgs)
    acked_at = await last_ack_at(js, stream, "raw")
    use = clock.stop()
    await js.delete_stream(stream)
    await nc.drain()
    return _round(n, use.started_at, max(published_at, acked_at), use.process_s, use.server_s)


async def _our_round(nodes: Nodes, n: int, sandbox: Sandbox | None = None) -> Round:
    nc = await connect(nodes.url, name="bench-queue")
    js = await jetstream(nc)
    handled = 0
    all_handled = asyncio.Event()
    inner = sandboxed_handler(NoOp(), sandbox) if sandbox is not None else None

    async def noop(ctx: TaskContext) -> Any:
        nonlocal handled
        result = None if inner is None else await inner(ctx)  # --sandbox: a confined child per task
        handled += 1
        if handled == n:
            all_handled.set()
        return result

    worker = TaskWorker(nc, js, {AGENT: (AgentQueueConfig(AGENT), noop)}, concurrency=256)
    await worker.start()
    queue = TaskQueue(nc, js)
    await queue.start()
    clock = CpuClock(nodes.pids)
    clock.start()
    await enqueue_all(queue, AGENT, n)
    enqueued_at = time.time()
    await asyncio.wait_for(all_handled.wait(), 300)
    acked_at = await last_ack_at(js, names.STREAM_TASKS, names.task_consumer(AGENT, Priority.NORMAL))
    use = clock.stop()
    await queue.stop()
    await worker.stop(5)
    await nc.drain()
    if worker.completed != n:
        raise RuntimeError(f"bench queue: {worker.completed} of {n} tasks succeeded")
    return _round(n, use.started_at, max(enqueued_at, acked_at), use.process_s, use.server_s)


def _round(n: int, started_at: float, ended_at: float, python_s: float, server_s: float | None) -> Round:
    server = None if server_s is None else server_s * 1e6 / n
    return Round(n / (ended_at - started_at), {"python": python_s * 1e6 / n, "server": server})


async def _latency(
    url: str, rate: int = 1000, seconds: float = 5.0, sandbox: Sandbox | None = None
) -> list[float]:
    nc = await connect(url, name="bench-latency")
    js = await jetstream(nc)
    lat: list[float] = []
    total = int(rate * seconds)
    all_started = asyncio.Event()

    inner = sandboxed_handler(NoOp(), sandbox) if sandbox is not None else None

    async def record(ctx: TaskContext) -> Any:
        lat.append((time.perf_counter() - ctx.input["t0"]) * 1000)
        if len(lat) == total:
            all_started.set()
        return None if inner is None else await inner(ctx)

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
    await asyncio.gather(*pending)  # every enqueue has also written its queued record
    await queue.stop()
    await worker.stop(5)
    await nc.drain()
    return lat


async def bench_queue(
    nodes: Nodes, n: int = 20_000, rounds: int = 3, latency_s: float = 5.0, sandbox: Sandbox | None = None,
    quota: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Both raw clients and our path alternate for ``rounds`` rounds in this
    process, then the latency at a fixed rate for ``latency_s`` seconds. With
    ``sandbox``, each of our tasks runs the noop agent in a confined child
    (``bench queue --sandbox``); the raw ceiling runs no agent at all. With
    ``quota``, our agent has a fleet-wide concurrency quota of that many
    (``bench queue --quota N``): each task claims a slot and gives it back."""
    await provision_for(nodes)
    if quota is not None:
        nc = await connect(nodes.url, name="bench-quota")
        await put_limit(await jetstream(nc), Quota(id="bench", agent=AGENT, max_concurrent=quota))
        await nc.drain()
    ours: list[Round] = []
    raw: dict[RawClient, list[Round]] = {client: [] for client in RAW_CLIENTS}
    for _ in range(rounds):
        for client in RAW_CLIENTS:
            raw[client].append(await _raw_round(nodes, n, client))
        ours.append(await _our_round(nodes, n, sandbox))
    # Sandboxed, a fixed 1,000 tasks/s is past what the children keep up with (the
    # latency would be queueing): 50 tasks/s shows the cost per task instead.
    rate = 1000 if sandbox is None else SANDBOXED_LATENCY_RATE
    lat = await _latency(nodes.url, rate, latency_s, sandbox)
    return {
        "tasks": n,
        "replicas": nodes.replicas,
        "nats_sync_interval": nodes.sync_interval,
        **compare(ours, raw, "tasks_per_s"),
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "latency_rate_per_s": rate,
        "sandbox": None if sandbox is None else sandbox.levels.as_dict(),
        "quota": quota,
    }
