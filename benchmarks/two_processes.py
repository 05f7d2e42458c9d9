"""The queue benchmark in the production topology: producer and consumer in separate processes.

Production runs producers (the gateway) and workers in different processes;
so does this comparison, for both raw clients and for our path. Each side is
a long-lived ``python -m benchmarks.two_processes ROLE CLIENT URL N`` that
speaks a line protocol on stdin/stdout:

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
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from nats.js.api import RetentionPolicy, StreamConfig

from benchmarks.harness import (
    RAW_CLIENTS,
    RawClient,
    Round,
    compare,
    last_ack_at,
    process_cpu_s,
    raw_connect,
    server_cpu_s,
)
from benchmarks.queue import enqueue_all, publish_all
from gateway.runtime import tune_gc
from mesh import names
from mesh.envelope import Priority
from mesh.provision import provision
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
                msgs = await sub.fetch(500, timeout=1)
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


@dataclass
class _Child:
    role: str
    proc: asyncio.subprocess.Process

    async def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def answer(self, word: str, timeout: float) -> list[str]:
        """The next line, which must start with ``word``; its other fields."""
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().split()
        if line[:1] != [word]:
            raise RuntimeError(f"bench {self.role}: expected {word!r}, got {' '.join(line)!r}")
        return line[1:]


@contextlib.asynccontextmanager
async def _children(url: str, n: int, roles: list[tuple[str, RawClient]]) -> AsyncIterator[list[_Child]]:
    """Start one process per role, return once all said "ready"; on exit tell
    them to stop and check they ended well (killing any that hangs)."""
    children: list[_Child] = []
    try:
        for role, client in roles:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.two_processes", role, client, url, str(n),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            children.append(_Child(f"{role} ({client})", proc))
        for child in children:
            await child.answer("ready", 60)
        yield children
    finally:
        failed = await asyncio.gather(*(_stop(child) for child in children))
    if any(failed):
        raise RuntimeError(f"bench processes failed: {', '.join(f for f in failed if f)}")


async def _stop(child: _Child) -> str | None:
    """Ask ``child`` to exit; a description of how it failed, or None."""
    with contextlib.suppress(ConnectionError):
        await child.tell("exit")
    try:
        code = await asyncio.wait_for(child.proc.wait(), 30)
    except TimeoutError:
        child.proc.kill()
        await child.proc.wait()
        return f"{child.role} did not exit"
    return None if code == 0 else f"{child.role} exited with {code}"


async def _round(
    url: str, n: int, producer: _Child, consumer: _Child, lane: tuple[str, str], server_pid: int | None
) -> Round:
    nc = await connect(url, name="bench-observer")
    js = await jetstream(nc)
    server_before = server_cpu_s(server_pid)
    started_at = time.time()
    for child in (consumer, producer):
        await child.tell("go")
    producer_cpu, produced_at = (float(field) for field in await producer.answer("done", 300))
    consumer_cpu = float((await consumer.answer("done", 300))[0])
    acked_at = await last_ack_at(js, *lane)
    server_after = server_cpu_s(server_pid)
    await nc.drain()
    server = None if server_before is None or server_after is None else server_after - server_before
    cpu = {"producer": producer_cpu, "consumer": consumer_cpu, "server": server}
    per_task = {name: None if s is None else s * 1e6 / n for name, s in cpu.items()}
    return Round(n / (max(produced_at, acked_at) - started_at), per_task)


async def bench_two_processes(
    url: str, n: int, rounds: int = 3, server_pid: int | None = None
) -> dict[str, Any]:
    """Raw plain, raw lean and our path, each producer and consumer in a
    process of its own, alternating for ``rounds`` rounds."""
    nc = await connect(url, name="bench-setup")
    js = await jetstream(nc)
    for client in RAW_CLIENTS:
        config = StreamConfig(
            name=_raw_stream(client), subjects=[_raw_subject(client)], retention=RetentionPolicy.WORK_QUEUE
        )
        await js.add_stream(config)
    await provision(js)
    await nc.drain()
    lanes: dict[str, tuple[str, str]] = {client: (_raw_stream(client), DURABLE) for client in RAW_CLIENTS}
    lanes["ours"] = (names.STREAM_TASKS, names.task_consumer(AGENT, Priority.NORMAL))
    roles: list[tuple[str, RawClient]] = [
        (role, client) for client in RAW_CLIENTS for role in ("raw-consumer", "raw-producer")
    ] + [("worker", "plain"), ("producer", "plain")]
    ours: list[Round] = []
    raw: dict[RawClient, list[Round]] = {client: [] for client in RAW_CLIENTS}
    async with _children(url, n, roles) as children:
        consumers_and_producers = zip(children[::2], children[1::2], strict=True)
        pairs = dict(zip([*RAW_CLIENTS, "ours"], consumers_and_producers, strict=True))
        for _ in range(rounds):
            for side, (consumer, producer) in pairs.items():
                result = await _round(url, n, producer, consumer, lanes[side], server_pid)
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
