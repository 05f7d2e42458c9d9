"""How far one machine goes: no-op tasks/s drained by 1, 2, 4… worker processes.

A round fills a lane with N tasks while no worker runs (ours: ``enqueue``
from this process; raw: pipelined ``publish_async`` to a bare work-queue
stream with the same replicas), then tells K drainer processes ``start`` and
times from that line to the last ack nats-server applied
(:func:`benchmarks.harness.last_ack_at`). Filling apart from draining
measures what the workers give, not how fast one producer enqueues (that is
reported too: ``enqueue_per_s``, one process, no worker running).

Each drainer is a ``python -m benchmarks.scaling ROLE CLIENT URL N``
(:mod:`benchmarks.children`) speaking lines on stdin/stdout:

* child → ``ready`` once connected;
* parent → ``start``: the child starts draining (ours: a fresh
  :class:`~mesh.queue.worker.TaskWorker`; raw: a ``fetch(500)`` + ``ack``
  loop on the shared durable), answers ``started``;
* parent → ``stop``: the child stops (ours: a graceful ``stop``), answers
  ``stopped <tasks it handled>``; the K counts must sum to N;
* parent → ``exit`` (or end of input): the child exits 0.

Raw plain, raw lean and ours alternate round by round with the same K, and
the ratio is ours against the stronger raw side with as many processes
(:func:`benchmarks.harness.compare`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from benchmarks.children import Child, children
from benchmarks.harness import (
    RAW_CLIENTS,
    Nodes,
    RawClient,
    Round,
    compare,
    last_ack_at,
    raw_connect,
    raw_fetch,
    server_cpu_s,
)
from benchmarks.queue import JS_ADMIN_TIMEOUT_S, enqueue_all, provision_for, publish_all, raw_work_queue
from gateway.runtime import tune_gc
from mesh import names
from mesh.envelope import Priority
from mesh.queue.producer import TaskQueue
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker, ensure_lane
from mesh.wire.connection import connect, jetstream

__all__ = ["bench_scaling", "speedups"]

AGENT = "bench-scale"
DURABLE = "drain"
CONCURRENCY = 256  # per worker process, as in the other queue benches
#: In flight on a lane over all its workers (ours and raw alike): room for 16
#: workers of 256, so that no K measured here runs into the consumer's cap
#: (past it the server answers pulls with 409s; see mesh.queue.worker).
LANE_LIMIT = 4096
LANE = AgentQueueConfig(AGENT, priorities=(Priority.NORMAL,), max_ack_pending=LANE_LIMIT)


def _raw_stream(client: RawClient) -> str:
    return f"RAW_SCALE_{client.upper()}"


def _raw_subject(client: RawClient) -> str:
    return f"raw-scale.{client}"


def speedups(per_s_by_workers: dict[int, float]) -> dict[str, float]:
    """Each K's tasks/s over the smallest K's: what adding workers gives."""
    base = per_s_by_workers[min(per_s_by_workers)]
    return {str(k): round(per_s / base, 2) for k, per_s in sorted(per_s_by_workers.items())}


# ---- the drainers ----------------------------------------------------------


async def _drive(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[int]]) -> None:
    """Say "ready"; "start" → ``start()``, "started"; "stop" → "stopped <handled>"; until "exit"."""
    print("ready", flush=True)
    while (line := (await asyncio.to_thread(sys.stdin.readline)).strip()) in ("start", "stop"):
        if line == "start":
            await start()
            print("started", flush=True)
        else:
            print(f"stopped {await stop()}", flush=True)


async def _our_drainer(url: str, client: RawClient) -> None:
    nc = await connect(url, name="bench-drainer")
    js = await jetstream(nc)
    workers: list[TaskWorker] = []

    async def noop(ctx: TaskContext) -> Any:
        return None

    async def start() -> None:
        workers.append(TaskWorker(nc, js, {AGENT: (LANE, noop)}, concurrency=CONCURRENCY))
        await workers[-1].start()

    async def stop() -> int:
        await workers[-1].stop(5)
        return workers[-1].completed

    await _drive(start, stop)
    await nc.drain()


async def _raw_drainer(url: str, client: RawClient) -> None:
    nc = await raw_connect(url, f"bench-raw-drainer-{client}", client)
    js = nc.jetstream()
    sub = await js.pull_subscribe(_raw_subject(client), durable=DURABLE, stream=_raw_stream(client))
    handled = 0
    stopping = asyncio.Event()
    loop: asyncio.Task[None] | None = None

    async def drain() -> None:
        nonlocal handled
        while not stopping.is_set():
            try:
                msgs = await raw_fetch(sub, 500, timeout=1)
            except TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            handled += len(msgs)

    async def start() -> None:
        nonlocal loop, handled
        handled = 0
        stopping.clear()
        loop = asyncio.create_task(drain())

    async def stop() -> int:
        # The last fetch ends within its 1 s timeout; none is left pending to
        # swallow the next round's messages.
        stopping.set()
        assert loop is not None
        await loop
        return handled

    await _drive(start, stop)
    # Everything is acked by now; plain nats-py's drain of this subscription
    # waited out its 30 s drain_timeout here (seen with the plain client only).
    await nc.close()


_ROLES: dict[str, Callable[[str, RawClient], Coroutine[Any, Any, None]]] = {
    "drainer": _our_drainer,
    "raw-drainer": _raw_drainer,
}


# ---- the parent ------------------------------------------------------------


async def _drain(
    js: JetStreamContext, n: int, drainers: list[Child], lane: tuple[str, str], nodes: Nodes
) -> Round:
    """One timed drain of the ``n`` tasks waiting on ``lane`` by ``drainers``."""
    server_before = server_cpu_s(nodes.pids)
    started_at = time.time()
    for drainer in drainers:
        await drainer.tell("start")
    for drainer in drainers:
        await drainer.answer("started", 60)
    acked_at = await last_ack_at(js, *lane, timeout=300)
    server_after = server_cpu_s(nodes.pids)
    handled = 0
    for drainer in drainers:
        await drainer.tell("stop")
    for drainer in drainers:
        handled += int((await drainer.answer("stopped", 60))[0])
    if handled != n:
        raise RuntimeError(f"bench scaling: {len(drainers)} drainers handled {handled} of {n} tasks")
    server = None if server_before is None or server_after is None else server_after - server_before
    return Round(n / (acked_at - started_at), {"server": None if server is None else server * 1e6 / n})


async def _set_up(js: JetStreamContext, nodes: Nodes) -> None:
    await provision_for(nodes)
    for client in RAW_CLIENTS:
        await js.add_stream(raw_work_queue(_raw_stream(client), _raw_subject(client), nodes.replicas))
        consumer = ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=LANE_LIMIT
        )
        await js.add_consumer(_raw_stream(client), consumer)
    await ensure_lane(js, LANE, Priority.NORMAL)


async def bench_scaling(
    nodes: Nodes, n: int = 20_000, workers: Sequence[int] = (1, 2, 4), rounds: int = 3
) -> dict[str, Any]:
    """For each K in ``workers``: raw plain, raw lean and ours, each drained by
    K processes, alternating for ``rounds`` rounds."""
    nc = await connect(nodes.url, name="bench-scaling")
    js = await jetstream(nc, JS_ADMIN_TIMEOUT_S)
    await _set_up(js, nodes)
    lanes: dict[str, tuple[str, str]] = {client: (_raw_stream(client), DURABLE) for client in RAW_CLIENTS}
    lanes["ours"] = (names.STREAM_TASKS, names.task_consumer(AGENT, Priority.NORMAL))
    by_workers: dict[str, dict[str, Any]] = {}
    enqueue_per_s: list[float] = []
    try:
        async with TaskQueue(nc, js) as queue:
            for k in workers:
                roles = [("raw-drainer", client) for client in RAW_CLIENTS for _ in range(k)]
                roles += [("drainer", "plain")] * k
                ours: list[Round] = []
                raw: dict[RawClient, list[Round]] = {client: [] for client in RAW_CLIENTS}
                async with children("benchmarks.scaling", nodes.url, n, roles) as started:
                    sides = [*RAW_CLIENTS, "ours"]
                    groups = {side: started[i * k : (i + 1) * k] for i, side in enumerate(sides)}
                    for _ in range(rounds):
                        for side, drainers in groups.items():
                            if side == "ours":
                                began = time.perf_counter()
                                await enqueue_all(queue, AGENT, n)
                                enqueue_per_s.append(n / (time.perf_counter() - began))
                                ours.append(await _drain(js, n, drainers, lanes[side], nodes))
                            else:
                                await publish_all(js, _raw_subject(cast(RawClient, side)), n)
                                raw[cast(RawClient, side)].append(
                                    await _drain(js, n, drainers, lanes[side], nodes)
                                )
                by_workers[str(k)] = compare(ours, raw, "tasks_per_s")
    finally:
        await nc.drain()
    return {
        "tasks": n,
        "replicas": nodes.replicas,
        "nats_sync_interval": nodes.sync_interval,
        "enqueue_per_s": round(max(enqueue_per_s), 1),
        "workers": by_workers,
        "speedup": speedups({int(k): r["tasks_per_s"] for k, r in by_workers.items()}),
    }


if __name__ == "__main__":
    role, client, url = sys.argv[1:4]
    if client not in RAW_CLIENTS:
        sys.exit(f"unknown client {client!r}: one of {', '.join(RAW_CLIENTS)}")
    tune_gc()  # every role, raw and ours, as the product's processes run
    asyncio.run(_ROLES[role](url, client))
