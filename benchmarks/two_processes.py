"""The queue benchmark in the production topology: producer and consumer in separate processes.

Production runs producers (the gateway) and workers in different processes;
so does this comparison, for both raw clients and for our path, on one
nats-server or a cluster (streams replicated on every node). Each side is
a long-lived ``python -m benchmarks.two_processes ROLE CLIENT URL N``
(:mod:`benchmarks.children`) that speaks a line protocol on stdin/stdout:

* child → ``ready`` once it has connected and set up (a worker has started);
* parent → ``go``: the child runs one round of N, then answers
  ``done <CPU seconds of the round> <wall clock at its end>``;
* parent → ``exit`` (or end of input): the child stops and exits 0.

A round's window runs from "go" to the later of the producer's last stored
publish and the last ack nats-server applied
(:func:`benchmarks.harness.last_ack_at`): neither the processes' start nor
their stop (a worker's stop waits up to a second for its lingering pulls) is
timed. The three pairs (plain, lean, ours) stay up for all rounds, which
alternate between them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from benchmarks.children import Child, children
from benchmarks.harness import (
    RAW_CLIENTS,
    Nodes,
    RawClient,
    Round,
    compare,
    last_ack_at,
    process_cpu_s,
    raw_connect,
    raw_fetch,
    server_cpu_s,
)
from benchmarks.queue import JS_ADMIN_TIMEOUT_S, enqueue_all, provision_for, publish_all, raw_work_queue
from gateway.runtime import tune_gc
from mesh import names
from mesh.envelope import Priority
from mesh.queue.producer import TaskQueue
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream

__all__ = ["bench_two_processes"]

AGENT = "bench2"
DURABLE = "raw2"


def _raw_stream(client: RawClient) -> str:
    return f"RAW2_{client.upper()}"


def _raw_subject(client: RawClient) -> str:
    return f"raw2.{client}"


# ---- the children ----------------------------------------------------------


async def _serve(one_round: Callable[[], Awaitable[None]]) -> None:
    """Say "ready"; run one round per "go", answering "done …", until "exit"."""
    print("ready", flush=True)
    while (await asyncio.to_thread(sys.stdin.readline)).strip() == "go":
        cpu = process_cpu_s()
        await one_round()
        print(f"done {process_cpu_s() - cpu:.6f} {time.time():.6f}", flush=True)


async def _raw_producer(url: str, n: int, client: RawClient) -> None:
    nc = await raw_connect(url, f"bench-raw-producer-{client}", client)
    js = nc.jetstream()
    await _serve(lambda: publish_all(js, _raw_subject(client), n))
    await nc.drain()


async def _raw_consumer(url: str, n: int, client: RawClient) -> None:
    nc = await raw_connect(url, f"bench-raw-consumer-{client}", client)
    js = nc.jetstream()
    sub = await js.pull_subscribe(_raw_subject(client), durable=DURABLE, stream=_raw_stream(client))

    async def one_round() -> None:
        got = 0
        while got < n:
            try:
                msgs = await raw_fetch(sub, 500, timeout=1)
            except TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)

    await _serve(one_round)
    await nc.drain()


async def _our_producer(url: str, n: int, client: RawClient) -> None:
    nc = await connect(url, name="bench-producer")
    js = await jetstream(nc)
    async with TaskQueue(nc, js) as queue:
        await _serve(lambda: enqueue_all(queue, AGENT, n))
    await nc.drain()


async def _our_worker(url: str, n: int, client: RawClient) -> None:
    nc = await connect(url, name="bench-worker")
    js = await jetstream(nc)
    handled, target = 0, 0
    reached = asyncio.Event()

    async def noop(ctx: TaskContext) -> Any:
        nonlocal handled
        handled += 1
        if handled >= target:
            reached.set()

    async def one_round() -> None:
        nonlocal target
        target += n
        reached.clear()
        await reached.wait()

    worker = TaskWorker(nc, js, {AGENT: (AgentQueueConfig(AGENT), noop)}, concurrency=256)
    await worker.start()
    await _serve(one_round)
    await worker.stop(5)
    await nc.drain()
    if worker.completed != target:
        sys.exit(f"bench worker: {worker.completed} of {target} tasks succeeded")


_ROLES: dict[str, Callable[[str, int, RawClient], Coroutine[Any, Any, None]]] = {
    "raw-producer": _raw_producer,
    "raw-consumer": _raw_consumer,
    "producer": _our_producer,
    "worker": _our_worker,
}


# ---- the parent ------------------------------------------------------------


async def _round(n: int, producer: Child, consumer: Child, lane: tuple[str, str], nodes: Nodes) -> Round:
    nc = await connect(nodes.url, name="bench-observer")
    js = await jetstream(nc)
    server_before = server_cpu_s(nodes.pids)
    started_at = time.time()
    for child in (consumer, producer):
        await child.tell("go")
    producer_cpu, produced_at = (float(field) for field in await producer.answer("done", 300))
    consumer_cpu = float((await consumer.answer("done", 300))[0])
    acked_at = await last_ack_at(js, *lane)
    server_after = server_cpu_s(nodes.pids)
    await nc.drain()
    server = None if server_before is None or server_after is None else server_after - server_before
    cpu = {"producer": producer_cpu, "consumer": consumer_cpu, "server": server}
    per_task = {name: None if s is None else s * 1e6 / n for name, s in cpu.items()}
    return Round(n / (max(produced_at, acked_at) - started_at), per_task)


async def bench_two_processes(nodes: Nodes, n: int, rounds: int = 3) -> dict[str, Any]:
    """Raw plain, raw lean and our path, each producer and consumer in a
    process of its own, alternating for ``rounds`` rounds."""
    nc = await connect(nodes.url, name="bench-setup")
    js = await jetstream(nc, JS_ADMIN_TIMEOUT_S)
    for client in RAW_CLIENTS:
        await js.add_stream(raw_work_queue(_raw_stream(client), _raw_subject(client), nodes.replicas))
    await nc.drain()
    await provision_for(nodes)
    lanes: dict[str, tuple[str, str]] = {client: (_raw_stream(client), DURABLE) for client in RAW_CLIENTS}
    lanes["ours"] = (names.STREAM_TASKS, names.task_consumer(AGENT, Priority.NORMAL))
    roles: list[tuple[str, RawClient]] = [
        (role, client) for client in RAW_CLIENTS for role in ("raw-consumer", "raw-producer")
    ] + [("worker", "plain"), ("producer", "plain")]
    ours: list[Round] = []
    raw: dict[RawClient, list[Round]] = {client: [] for client in RAW_CLIENTS}
    async with children("benchmarks.two_processes", nodes.url, n, roles) as started:
        consumers_and_producers = zip(started[::2], started[1::2], strict=True)
        pairs = dict(zip([*RAW_CLIENTS, "ours"], consumers_and_producers, strict=True))
        for _ in range(rounds):
            for side, (consumer, producer) in pairs.items():
                result = await _round(n, producer, consumer, lanes[side], nodes)
                if side == "ours":
                    ours.append(result)
                else:
                    raw[cast(RawClient, side)].append(result)
    return compare(ours, raw, "tasks_per_s")


if __name__ == "__main__":
    role, client, url, count = sys.argv[1:5]
    if client not in RAW_CLIENTS:
        sys.exit(f"unknown client {client!r}: one of {', '.join(RAW_CLIENTS)}")
    tune_gc()  # every role, raw and ours, as the product's processes run
    asyncio.run(_ROLES[role](url, int(count), client))
